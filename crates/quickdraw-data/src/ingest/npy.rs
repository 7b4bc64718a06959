//! numpy_bitmap files (`numpy_bitmap/<class>.npy`): NumPy format v1/v2/v3, dtype `|u1`,
//! C order, shape `(N, 784)` = N 28x28 grey images (numpy.org/doc/stable/reference/generated/
//! numpy.lib.format.html). Images only: no strokes, key_id = row index.

use std::io::{self, BufRead, Read};

use crate::drawing::{Bitmap, Drawing, Ink};
use crate::validate::{Reject, RejectReason};

/// Side of Google's numpy_bitmap images.
pub const NPY_SIDE: usize = 28;
const ROW: usize = NPY_SIDE * NPY_SIDE;

/// Parses the header; returns the number of rows.
pub(crate) fn read_header<R: Read>(r: &mut R) -> Result<u64, String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|e| format!("cannot read .npy magic: {e}"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let hlen = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if hlen > 1 << 20 {
        return Err(format!(".npy header of {hlen} bytes is implausible"));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h)
        .map_err(|e| format!("truncated .npy header: {e}"))?;
    let h = String::from_utf8_lossy(&h);
    let compact: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    if !(compact.contains("'descr':'|u1'") || compact.contains("'descr':'<u1'")) {
        return Err(format!(
            "dtype must be uint8 ('|u1'), header is {}",
            h.trim()
        ));
    }
    if !compact.contains("'fortran_order':False") {
        return Err("fortran_order arrays are not supported".into());
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("no shape in header {}", h.trim()))?;
    let dims: Vec<u64> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("bad shape ({shape})"))?;
    match dims[..] {
        [n, 784] => Ok(n),
        [n, 28, 28] => Ok(n),
        _ => Err(format!("shape ({shape}) is not (N, 784)")),
    }
}

pub(crate) fn next_row<R: BufRead>(
    r: &mut R,
) -> io::Result<Option<(Vec<u8>, bool, Option<Reject>)>> {
    let mut buf = vec![0u8; ROW];
    let n = crate::readfull::read_up_to(r, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, n < ROW, None)))
}

pub fn parse_row(b: &[u8], index: u64, class: &str) -> Result<Drawing, Reject> {
    if b.len() != ROW {
        return Err(Reject::new(
            RejectReason::Truncated,
            format!("image row has {} of {ROW} bytes", b.len()),
        ));
    }
    Ok(Drawing {
        key_id: index - 1,
        word: class.to_string(),
        countrycode: String::new(),
        timestamp: 0,
        recognized: true,
        ink: Ink::Bitmap(Bitmap {
            side: NPY_SIDE,
            pixels: b.to_vec(),
        }),
    })
}

/// Writes a `.npy` v1 header for `rows` images of 784 bytes.
pub fn write_header(rows: u64, out: &mut Vec<u8>) {
    let mut dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({rows}, 784), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rows() {
        let mut f = vec![];
        write_header(2, &mut f);
        assert_eq!(f.len() % 64, 0);
        f.extend(std::iter::repeat_n(7u8, 784));
        f.extend(std::iter::repeat_n(9u8, 700));
        let mut r = &f[..];
        assert_eq!(read_header(&mut r).unwrap(), 2);
        let (row, trunc, _) = next_row(&mut r).unwrap().unwrap();
        assert!(!trunc);
        let d = parse_row(&row, 1, "fish").unwrap();
        assert_eq!(d.key_id, 0);
        let (row, trunc, _) = next_row(&mut r).unwrap().unwrap();
        assert!(trunc);
        assert_eq!(
            parse_row(&row, 2, "fish").unwrap_err().reason,
            RejectReason::Truncated
        );
        assert!(next_row(&mut r).unwrap().is_none());
    }

    #[test]
    fn bad_headers() {
        assert!(
            read_header(&mut &b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}"[..])
                .unwrap_err()
                .contains("uint8")
        );
        assert!(read_header(&mut &b"PK\x03\x04"[..]).is_err());
    }
}
