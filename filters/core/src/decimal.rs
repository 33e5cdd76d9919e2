//! Decimal numbers appended to text without the formatting machinery (`format!` is a
//! noticeable share of a request's wasm instructions when it runs several times per request).

/// Appends `n` in decimal, as `write!(out, "{n}")` would.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(n, &mut digits));
}

/// [`push_decimal`] for a `String`.
pub fn push_decimal_str(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    for &d in decimal(n, &mut digits) {
        out.push(char::from(d));
    }
}

/// `n`'s decimal digits, written at the end of `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    while at > 0 {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.get(at..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_as_display() {
        for n in [0, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            let mut bytes = b"x".to_vec();
            push_decimal(&mut bytes, n);
            assert_eq!(bytes, format!("x{n}").into_bytes());
            let mut text = String::from("y");
            push_decimal_str(&mut text, n);
            assert_eq!(text, format!("y{n}"));
        }
    }
}
