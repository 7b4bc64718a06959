//! numpy_bitmap files (`numpy_bitmap/<class>.npy`): NumPy format v1/v2/v3, dtype `|u1`,
//! C order, shape `(N, 784)` = N 28x28 grey images (numpy.org/doc/stable/reference/generated/
//! numpy.lib.format.html). Images only: no strokes, key_id = row index.

use std::io::{self, BufRead, Read};

use crate::drawing::{Bitmap, Drawing, Ink};
use crate::validate::{Reject, RejectReason};

/// Side of Google's numpy_bitmap images.
pub const NPY_SIDE: usize = 28;
/// Bytes of one image row.
pub const ROW: usize = NPY_SIDE * NPY_SIDE;

/// Longest header accepted: a `|u1` two- or three-dimensional array's dict is under 128 bytes
/// (NumPy pads the whole header to a multiple of 64), so anything near this is not a header.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most rows a header may announce (2^32 images are 3.4 TB; the largest QuickDraw class has
/// under a million drawings).
pub const MAX_ROWS: u64 = 1 << 32;

/// Parses the header; returns the number of rows and the header's length in bytes (magic and
/// length field included). Errors start with `bad_header:`.
pub(crate) fn read_header<R: Read>(r: &mut R) -> Result<(u64, u64), String> {
    read_header_inner(r).map_err(|e| format!("bad_header: {e}"))
}

fn read_header_inner<R: Read>(r: &mut R) -> Result<(u64, u64), String> {
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
    if hlen > MAX_HEADER_LEN {
        return Err(format!(
            ".npy header length {hlen} is implausible (at most {MAX_HEADER_LEN})"
        ));
    }
    let prefix = if magic[6] == 1 { 10 } else { 12 };
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h)
        .map_err(|e| format!("truncated .npy header: {e}"))?;
    let h = String::from_utf8_lossy(&h);
    // The dict is followed only by padding: anything else means the length field is wrong and
    // the images would be read misaligned.
    let body = h.trim_end_matches([' ', '\n', '\0']);
    if !(body.trim_start().starts_with('{') && body.ends_with('}')) {
        return Err(format!(
            "header length {hlen} does not end at the end of the header dict"
        ));
    }
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
    let n = match dims[..] {
        [n, 784] => n,
        [n, 28, 28] => n,
        _ => return Err(format!("shape ({shape}) is not (N, 784)")),
    };
    if n > MAX_ROWS {
        return Err(format!(
            "shape ({shape}) announces {n} rows, more than {MAX_ROWS}"
        ));
    }
    Ok((n, (prefix + hlen) as u64))
}

/// Bytes a file with `rows` images and a header of `header_len` bytes should have.
pub fn expected_len(rows: u64, header_len: u64) -> u64 {
    header_len + rows * ROW as u64
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
        let header_len = (f.len() - 784 - 700) as u64;
        assert_eq!(read_header(&mut r).unwrap(), (2, header_len));
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

    #[test]
    fn absurd_header_lengths_and_shapes_are_bad_headers() {
        let mut good = vec![];
        write_header(3, &mut good);
        good.extend(std::iter::repeat_n(5u8, 3 * 784));
        // A length field of 0xFFFF swallows image bytes into the "header".
        let mut long = good.clone();
        long[8..10].copy_from_slice(&0xFFFFu16.to_le_bytes());
        let e = read_header(&mut &long[..]).unwrap_err();
        assert!(e.starts_with("bad_header:") && e.contains("65535"), "{e}");
        // A length that is plausible but runs into the images.
        let mut into_data = good.clone();
        into_data[8..10].copy_from_slice(&200u16.to_le_bytes());
        let e = read_header(&mut &into_data[..]).unwrap_err();
        assert!(
            e.contains("does not end at the end of the header dict"),
            "{e}"
        );
        let mut huge = vec![];
        write_header(99_999_999_999_999, &mut huge);
        let e = read_header(&mut &huge[..]).unwrap_err();
        assert!(
            e.starts_with("bad_header:") && e.contains("99999999999999"),
            "{e}"
        );
    }
}
