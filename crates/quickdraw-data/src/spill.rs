//! The conversion's temporary record: a validated drawing in a compact binary form, spilled to
//! disk between reading (phase 1) and the shuffled, encoded shard writing (phase 2).
//!
//! Spilling the drawing instead of its finished `tf.train.Example` makes the temporary files about
//! twelve times smaller (~400 bytes against ~4.9 KB for a simplified 64x64 drawing), so a full-size
//! conversion needs little scratch space and the spill costs little I/O; rasterising and encoding
//! then happen once, in shard order. Written by hand because it is internal, short-lived and must
//! carry the `f32` coordinates bit for bit (so the pixels equal those of the drawing as read).
//!
//! Layout (little-endian): `u32` length of the rest, then `u64 key_id`, `i64 timestamp`,
//! `u8 recognized`, `u8` + word bytes, `u8` + countrycode bytes, `u8` ink kind; strokes (kind 0):
//! `u32` stroke count, per stroke `u32 n`, `u8 has_t`, `f32 x[n]`, `f32 y[n]` (`f32 t[n]`);
//! bitmap (kind 1): `u32 side`, `side * side` pixel bytes.

use std::io::{self, Read};

use crate::drawing::{Bitmap, Drawing, Ink, Stroke};

/// Appends the spill record of `d` to `out`; returns its length.
pub fn append(d: &Drawing, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&d.key_id.to_le_bytes());
    out.extend_from_slice(&d.timestamp.to_le_bytes());
    out.push(d.recognized as u8);
    short_str(out, &d.word);
    short_str(out, &d.countrycode);
    match &d.ink {
        Ink::Strokes(strokes) => {
            out.push(0);
            out.extend_from_slice(&(strokes.len() as u32).to_le_bytes());
            for s in strokes {
                out.extend_from_slice(&(s.x.len() as u32).to_le_bytes());
                out.push(s.t.is_some() as u8);
                floats(out, &s.x);
                floats(out, &s.y);
                if let Some(t) = &s.t {
                    floats(out, t);
                }
            }
        }
        Ink::Bitmap(b) => {
            out.push(1);
            out.extend_from_slice(&(b.side as u32).to_le_bytes());
            out.extend_from_slice(&b.pixels);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out.len() - start
}

/// Word and country code are short (validation caps them well below 256 bytes); longer ones are
/// cut at a character boundary rather than corrupting the record.
fn short_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn floats(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Appends one whole spill record (length prefix included) read from `r` to `out`; returns its
/// length.
pub fn read_record<R: Read>(r: &mut R, out: &mut Vec<u8>) -> io::Result<usize> {
    let start = out.len();
    out.resize(start + 4, 0);
    r.read_exact(&mut out[start..])?;
    let len = u32::from_le_bytes(out[start..start + 4].try_into().expect("4 bytes")) as usize;
    out.resize(start + 4 + len, 0);
    r.read_exact(&mut out[start + 4..])?;
    Ok(4 + len)
}

/// Decodes one whole spill record (as [`append`] wrote it).
pub fn decode(rec: &[u8]) -> io::Result<Drawing> {
    let mut c = Cursor { b: rec, at: 4 };
    let len = u32::from_le_bytes(c.take(0, 4)?.try_into().expect("4 bytes")) as usize;
    if len + 4 != rec.len() {
        return Err(bad("length prefix does not match the record"));
    }
    let key_id = c.u64()?;
    let timestamp = c.u64()? as i64;
    let recognized = c.u8()? != 0;
    let word = c.short_str()?;
    let countrycode = c.short_str()?;
    let ink = match c.u8()? {
        0 => {
            let n_strokes = c.u32()? as usize;
            let mut strokes = Vec::with_capacity(n_strokes.min(rec.len()));
            for _ in 0..n_strokes {
                let n = c.u32()? as usize;
                let has_t = c.u8()? != 0;
                let x = c.floats(n)?;
                let y = c.floats(n)?;
                let t = if has_t { Some(c.floats(n)?) } else { None };
                strokes.push(Stroke { x, y, t });
            }
            Ink::Strokes(strokes)
        }
        1 => {
            let side = c.u32()? as usize;
            let pixels = c.bytes(side * side)?.to_vec();
            Ink::Bitmap(Bitmap { side, pixels })
        }
        k => return Err(bad(&format!("unknown ink kind {k}"))),
    };
    if c.at != rec.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(Drawing {
        key_id,
        word,
        countrycode,
        timestamp,
        recognized,
        ink,
    })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt spill record: {what}"),
    )
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&self, at: usize, n: usize) -> io::Result<&'a [u8]> {
        self.b
            .get(at..at.checked_add(n).ok_or_else(|| bad("size overflow"))?)
            .ok_or_else(|| bad("record cut short"))
    }
    fn bytes(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let s = self.take(self.at, n)?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn short_str(&mut self) -> io::Result<String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
    fn floats(&mut self, n: usize) -> io::Result<Vec<f32>> {
        let b = self.bytes(n.checked_mul(4).ok_or_else(|| bad("size overflow"))?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawing(ink: Ink) -> Drawing {
        Drawing {
            key_id: 5_678_901_234_567_890,
            word: "the Eiffel Tower".into(),
            countrycode: "FR".into(),
            timestamp: -1_490_000_000,
            recognized: true,
            ink,
        }
    }

    #[test]
    fn strokes_and_bitmaps_round_trip_bit_for_bit() {
        let raw = Stroke {
            x: vec![0.1, -3.5e7, f32::MIN_POSITIVE],
            y: vec![1.0, 2.0, 255.0],
            t: Some(vec![0.0, 16.5, 1e9]),
        };
        let cases = [
            drawing(Ink::Strokes(vec![
                Stroke::new(vec![1.0, 2.0], vec![3.0, 4.0]),
                raw,
                Stroke::new(vec![], vec![]),
            ])),
            drawing(Ink::Strokes(vec![])),
            drawing(Ink::Bitmap(Bitmap {
                side: 3,
                pixels: (0..9).collect(),
            })),
        ];
        let mut buf = b"x".to_vec();
        let mut lens = vec![];
        for d in &cases {
            lens.push(append(d, &mut buf));
        }
        assert_eq!(buf.len(), 1 + lens.iter().sum::<usize>());
        let mut r = &buf[1..];
        for (d, &len) in cases.iter().zip(&lens) {
            let mut rec = vec![];
            assert_eq!(read_record(&mut r, &mut rec).unwrap(), len);
            assert_eq!(&decode(&rec).unwrap(), d);
        }
        assert!(r.is_empty());
        // 46 bytes of header and strings, 5 per stroke, 8 per point (12 with times).
        assert_eq!(
            lens[0],
            4 + 8 + 8 + 1 + 17 + 3 + 1 + 4 + 3 * 5 + (2 + 3 + 0) * 8 + 3 * 4
        );
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let mut rec = vec![];
        append(
            &drawing(Ink::Strokes(vec![Stroke::new(vec![1.0], vec![2.0])])),
            &mut rec,
        );
        for cut in 0..rec.len() {
            assert!(decode(&rec[..cut]).is_err(), "cut at {cut}");
        }
        let mut big = rec.clone();
        // Claim a huge point count: refused without allocating it.
        let at = 4 + 8 + 8 + 1 + 17 + 3 + 1 + 4;
        big[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&big).is_err());
    }
}
