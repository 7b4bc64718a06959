//! Google's binary format (`full/binary/<class>.bin`), little-endian records:
//! `key_id u64, countrycode [u8; 2], recognized u8, timestamp u32, n_strokes u16`, then per
//! stroke `n_points u16, x [u8; n], y [u8; n]` (github.com/googlecreativelab/quickdraw-dataset,
//! "The binary file format"). The word is not stored: it is the file's class.

use std::io::{self, BufRead};

use crate::drawing::{Drawing, Ink, Stroke};
use crate::readfull::read_up_to;
use crate::validate::{Reject, RejectReason};

const HEADER: usize = 8 + 2 + 1 + 4 + 2;

/// Reads the bytes of one record; `truncated` when the file ends inside it.
pub(crate) fn next_record<R: BufRead>(
    r: &mut R,
) -> io::Result<Option<(Vec<u8>, bool, Option<Reject>)>> {
    let mut buf = vec![0u8; HEADER];
    let n = read_up_to(r, &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER {
        buf.truncate(n);
        return Ok(Some((buf, true, None)));
    }
    let n_strokes = u16::from_le_bytes([buf[HEADER - 2], buf[HEADER - 1]]);
    for _ in 0..n_strokes {
        let at = buf.len();
        buf.resize(at + 2, 0);
        if read_up_to(r, &mut buf[at..])? < 2 {
            return Ok(Some((buf, true, None)));
        }
        let n_points = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
        let at = buf.len();
        buf.resize(at + 2 * n_points, 0);
        let got = read_up_to(r, &mut buf[at..])?;
        if got < 2 * n_points {
            buf.truncate(at + got);
            return Ok(Some((buf, true, None)));
        }
    }
    Ok(Some((buf, false, None)))
}

/// Decodes one record's bytes.
pub fn parse_record(b: &[u8], class: &str) -> Result<Drawing, Reject> {
    let short = || {
        Reject::new(
            RejectReason::Truncated,
            format!("record has only {} bytes", b.len()),
        )
    };
    if b.len() < HEADER {
        return Err(short());
    }
    let key_id = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
    let cc = &b[8..10];
    let countrycode = String::from_utf8_lossy(cc)
        .trim_end_matches('\0')
        .to_string();
    let recognized = match b[10] {
        0 => false,
        1 => true,
        v => {
            return Err(Reject::new(
                RejectReason::WrongType,
                format!("recognized byte is {v}, expected 0 or 1"),
            ));
        }
    };
    let timestamp = u32::from_le_bytes(b[11..15].try_into().expect("4 bytes")) as i64;
    let n_strokes = u16::from_le_bytes([b[15], b[16]]) as usize;
    let mut at = HEADER;
    let mut strokes = Vec::with_capacity(n_strokes);
    for _ in 0..n_strokes {
        if b.len() < at + 2 {
            return Err(short());
        }
        let n = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        at += 2;
        if b.len() < at + 2 * n {
            return Err(short());
        }
        let x = b[at..at + n].iter().map(|&v| v as f32).collect();
        let y = b[at + n..at + 2 * n].iter().map(|&v| v as f32).collect();
        at += 2 * n;
        strokes.push(Stroke::new(x, y));
    }
    Ok(Drawing {
        key_id,
        word: class.to_string(),
        countrycode,
        timestamp,
        recognized,
        ink: Ink::Strokes(strokes),
    })
}

/// Encodes a drawing in the binary format (coordinates must already be simplified, 0..=255).
pub fn encode_record(d: &Drawing, out: &mut Vec<u8>) {
    out.extend_from_slice(&d.key_id.to_le_bytes());
    let mut cc = [0u8; 2];
    for (i, c) in d.countrycode.bytes().take(2).enumerate() {
        cc[i] = c;
    }
    out.extend_from_slice(&cc);
    out.push(d.recognized as u8);
    out.extend_from_slice(&(d.timestamp.clamp(0, u32::MAX as i64) as u32).to_le_bytes());
    let strokes = d.strokes().unwrap_or(&[]);
    out.extend_from_slice(&(strokes.len() as u16).to_le_bytes());
    for s in strokes {
        out.extend_from_slice(&(s.x.len() as u16).to_le_bytes());
        out.extend(s.x.iter().map(|&v| v.clamp(0.0, 255.0) as u8));
        out.extend(s.y.iter().map(|&v| v.clamp(0.0, 255.0) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_built_record() {
        // key_id 1, "CH", recognized, timestamp 2, one stroke of two points (3,4) (5,6).
        let bytes = [
            1, 0, 0, 0, 0, 0, 0, 0, b'C', b'H', 1, 2, 0, 0, 0, 1, 0, 2, 0, 3, 5, 4, 6,
        ];
        let mut r = &bytes[..];
        let (rec, truncated, _) = next_record(&mut r).unwrap().unwrap();
        assert!(!truncated);
        let d = parse_record(&rec, "cat").unwrap();
        assert_eq!(
            (d.key_id, d.countrycode.as_str(), d.recognized, d.timestamp),
            (1, "CH", true, 2)
        );
        assert_eq!(
            d.strokes().unwrap(),
            &[Stroke::new(vec![3., 5.], vec![4., 6.])]
        );
        let mut enc = vec![];
        encode_record(&d, &mut enc);
        assert_eq!(enc, bytes);
        // Cut inside the last stroke: reported as truncated.
        let mut r = &bytes[..bytes.len() - 1];
        let (rec, truncated, _) = next_record(&mut r).unwrap().unwrap();
        assert!(truncated);
        assert_eq!(
            parse_record(&rec, "cat").unwrap_err().reason,
            RejectReason::Truncated
        );
    }
}
