//! Decimal numbers written without allocating, shared by the load
//! generator and the floor server (which includes this file by path).

/// Appends the decimal digits of `n`.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::push_u64;

    #[test]
    fn digits() {
        let mut buf = Vec::new();
        for n in [0, 7, 10, 4_294_967_295, u64::MAX] {
            buf.clear();
            push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }
}
