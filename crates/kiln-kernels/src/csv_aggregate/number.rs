//! Numbers in CSV fields: a fast path for plain decimals, the standard library for the rest.

/// Parses a CSV number. Plain decimals (`-12.345`, at most 19 digits) take Clinger's fast
/// path — an exact integer mantissa divided by an exact power of ten, which is correctly
/// rounded — and skip UTF-8 checks; anything else goes to the standard library's parser.
/// Both give the same, correctly rounded value.
pub(super) fn parse_number(field: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, digits) = match field {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, field),
    };
    let mut mantissa = 0u64;
    let (mut count, mut fraction, mut dot) = (0usize, 0usize, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                count += 1;
                fraction += usize::from(dot);
            }
            b'.' if !dot => dot = true,
            _ => return parse_slow(field),
        }
    }
    if count == 0 || count > 19 || mantissa > (1 << 53) || fraction >= POW10.len() {
        return parse_slow(field);
    }
    let value = mantissa as f64 / POW10[fraction];
    Some(if negative { -value } else { value })
}

fn parse_slow(field: &[u8]) -> Option<f64> {
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::mix;
    use super::*;

    #[test]
    fn the_fast_number_parser_agrees_with_the_standard_one() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "5.",
            ".5",
            "-.5",
            "523.117",
            "999.999",
            "0.001",
            "123456789012345678",
            "9007199254740993",
            "1e5",
            "-2.5E-3",
            "inf",
            "NaN",
            "",
            "-",
            ".",
            "1.2.3",
            "12a",
            " 7 ",
            "0.1",
            "0.30000000000000004",
            "1234567890.0123456789",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x = mix(x);
            let decimals = (x % 8) as usize;
            let v = (x >> 12) % 10_000_000_000;
            let text = format!("{v}");
            let (int, frac) = text.split_at(text.len().saturating_sub(decimals));
            let sign = if x & 1 == 1 { "-" } else { "" };
            cases.push(format!(
                "{sign}{}.{frac}",
                if int.is_empty() { "0" } else { int }
            ));
        }
        for case in &cases {
            let want = case.trim().parse::<f64>().ok();
            let got = parse_number(case.as_bytes());
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{case:?}");
        }
    }
}
