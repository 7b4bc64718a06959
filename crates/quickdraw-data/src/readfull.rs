//! [`read_up_to`]: fill a buffer until it is full or the reader ends. `Read::read_exact` fails on
//! a short read without saying how much it got; the format readers need that count to report a
//! truncated record (TFRecord, binary, npy, file sniffing, download checks).

use std::io::{self, Read};

/// Reads until `buf` is full or EOF; returns the number of bytes read.
pub fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_and_full_reads() {
        let data = [1u8, 2, 3];
        let mut buf = [0u8; 5];
        assert_eq!(super::read_up_to(&mut &data[..], &mut buf).unwrap(), 3);
        let mut buf = [0u8; 2];
        assert_eq!(super::read_up_to(&mut &data[..], &mut buf).unwrap(), 2);
        assert_eq!(buf, [1, 2]);
    }
}
