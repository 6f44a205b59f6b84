//! NumPy's `.npy` format (version 1.0), the artifact format of numeric results: a magic
//! string, a little-endian u16 header length, a Python-literal header, then the raw
//! little-endian data. Written by hand: the format is a dozen bytes of framing, and
//! streaming the data as it is computed is what keeps memory bounded.

use std::io::{self, Write};

/// The header for an array of `descr` (`<u4`, `<f8`, …) with `shape`. The whole preamble
/// is padded with spaces to a multiple of 64 bytes so the data starts aligned.
pub fn header(descr: &str, fortran_order: bool, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let order = if fortran_order { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {dims}, }}");
    // magic (6) + version (2) + length (2) + dict + '\n'
    let unpadded = 10 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `values` as little-endian u32.
pub fn write_u32(out: &mut impl Write, values: &[u32]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(values.len() * 4);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&buf)
}

/// Writes `values` as little-endian f64.
pub fn write_f64(out: &mut impl Write, values: impl Iterator<Item = f64>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
        if buf.len() >= 64 * 1024 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_aligned_and_describes_the_array() {
        for (descr, fortran, shape) in [("<u4", false, vec![10]), ("<f8", true, vec![4096, 4096])] {
            let h = header(descr, fortran, &shape);
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            assert_eq!(h.len() % 64, 0);
            let len = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(10 + len, h.len());
            let dict = std::str::from_utf8(&h[10..]).unwrap();
            assert!(dict.ends_with('\n'));
            assert!(dict.contains(&format!("'descr': '{descr}'")), "{dict}");
        }
        let h = String::from_utf8_lossy(&header("<u4", false, &[7])).into_owned();
        assert!(
            h.contains("'shape': (7,)") && h.contains("'fortran_order': False"),
            "{h}"
        );
        let h = String::from_utf8_lossy(&header("<f8", true, &[2, 3])).into_owned();
        assert!(
            h.contains("'shape': (2, 3)") && h.contains("'fortran_order': True"),
            "{h}"
        );
    }

    #[test]
    fn data_is_little_endian() {
        let mut out = Vec::new();
        write_u32(&mut out, &[1, 0x0102_0304]).unwrap();
        assert_eq!(out, [1, 0, 0, 0, 4, 3, 2, 1]);
        let mut out = Vec::new();
        write_f64(&mut out, [1.5f64].into_iter()).unwrap();
        assert_eq!(out, 1.5f64.to_le_bytes());
    }
}
