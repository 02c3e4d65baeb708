//! The three number readers of the beanstalkd protocol.
//!
//! beanstalkd parses numeric arguments with three different routines and
//! clients can observe every difference between them, so each one is
//! reproduced here exactly:
//!
//! * [`read_u64`] / [`read_u32`] — the strict reader used for almost every
//!   argument: spaces (0x20 only) may precede the number, the next byte must
//!   be a decimal digit, overflow is an error, and the *last* argument of a
//!   line must be followed by the end of the line.
//! * [`read_kick_bound`] — C `strtoul` as used by `kick`: any ASCII
//!   whitespace and a sign may precede the digits, trailing garbage is
//!   ignored, negative values wrap, and the result is truncated to 32 bits.
//! * [`read_reserve_timeout`] — the 1.13 reader for `reserve-with-timeout`:
//!   the strict reader without the end-of-line check, limited to `i32::MAX`.
//!
//! All readers work on byte slices that never contain the line's CRLF, so
//! "end of line" is simply the end of the slice.

/// Where a strict read may stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// More arguments follow: parsing continues right after the digits.
    Middle,
    /// The last argument: the digits must end the line.
    Last,
}

/// The strict unsigned reader, 64-bit. Returns the value and the rest of the
/// line after the digits, or `None` for BAD_FORMAT.
pub fn read_u64(input: &[u8], position: Position) -> Option<(u64, &[u8])> {
    let start = input.iter().position(|&b| b != b' ').unwrap_or(input.len());
    let digits = &input[start..];
    let count = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if count == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &digits[..count] {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    let rest = &digits[count..];
    if position == Position::Last && !rest.is_empty() {
        return None;
    }
    Some((value, rest))
}

/// The strict unsigned reader, 32-bit: as [`read_u64`], and values above
/// `u32::MAX` are BAD_FORMAT.
pub fn read_u32(input: &[u8], position: Position) -> Option<(u32, &[u8])> {
    let (value, rest) = read_u64(input, position)?;
    Some((u32::try_from(value).ok()?, rest))
}

/// The `kick` bound: C `strtoul(s, &end, 10)` followed by a check that at
/// least one digit was consumed and that no overflow happened, then a
/// truncation to `unsigned int`.
pub fn read_kick_bound(input: &[u8]) -> Option<u32> {
    // isspace() in the C locale: space, \t, \n, \v, \f, \r.
    let start =
        input.iter().position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')).unwrap_or(input.len());
    let mut rest = &input[start..];
    let mut negative = false;
    if let Some((&sign, tail)) = rest.split_first()
        && (sign == b'+' || sign == b'-')
    {
        negative = sign == b'-';
        rest = tail;
    }
    let count = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if count == 0 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &rest[..count] {
        // strtoul reports ERANGE on overflow, which the server rejects.
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if negative {
        value = value.wrapping_neg();
    }
    // The result lands in a C `unsigned int`: keep the low 32 bits.
    Some(value as u32)
}

/// The `reserve-with-timeout` seconds as beanstalkd 1.13 reads them: the
/// strict reader without the end-of-line check, and at most `i32::MAX`.
pub fn read_reserve_timeout(input: &[u8]) -> Option<u32> {
    let (value, _) = read_u32(input, Position::Middle)?;
    (value <= i32::MAX as u32).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_u64(s: &str) -> Option<u64> {
        read_u64(s.as_bytes(), Position::Last).map(|(v, _)| v)
    }

    #[test]
    fn strict_reader_accepts_spaces_and_leading_zeros() {
        assert_eq!(last_u64("1"), Some(1));
        assert_eq!(last_u64("   01"), Some(1));
        assert_eq!(last_u64("18446744073709551615"), Some(u64::MAX));
    }

    #[test]
    fn strict_reader_rejects_what_beanstalkd_rejects() {
        for bad in ["", " ", "+1", "-0", "\t1", "1 ", "0x10", "18446744073709551616", "99999999999999999999999", "1a"] {
            assert_eq!(last_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strict_reader_middle_returns_rest() {
        let (v, rest) = read_u32(b"12 34", Position::Middle).unwrap();
        assert_eq!((v, rest), (12, &b" 34"[..]));
        let (v, rest) = read_u32(b"0x10 3", Position::Middle).unwrap();
        assert_eq!((v, rest), (0, &b"x10 3"[..]));
        assert_eq!(read_u32(b"4294967295", Position::Last).unwrap().0, u32::MAX);
        assert!(read_u32(b"4294967296", Position::Last).is_none());
    }

    #[test]
    fn kick_bound_follows_strtoul() {
        let k = |s: &str| read_kick_bound(s.as_bytes());
        assert_eq!(k("1abc"), Some(1));
        assert_eq!(k("1 "), Some(1));
        assert_eq!(k("5x"), Some(5));
        assert_eq!(k("\t 7"), Some(7));
        assert_eq!(k("+3"), Some(3));
        assert_eq!(k("-1"), Some(u32::MAX));
        assert_eq!(k("4294967296"), Some(0));
        assert_eq!(k("18446744073709551615"), Some(u32::MAX));
        assert_eq!(k("18446744073709551616"), None);
        assert_eq!(k("0x10"), Some(0));
        assert_eq!(k("abc"), None);
        assert_eq!(k(""), None);
        assert_eq!(k("-"), None);
        assert_eq!(k("+ 1"), None);
    }

    #[test]
    fn reserve_timeout_follows_1_13() {
        let r = |s: &str| read_reserve_timeout(s.as_bytes());
        assert_eq!(r("0"), Some(0));
        assert_eq!(r("1x"), Some(1));
        assert_eq!(r("1 "), Some(1));
        assert_eq!(r("0abc"), Some(0));
        assert_eq!(r("2147483647"), Some(i32::MAX as u32));
        for bad in ["abc", "", "-1", "4294967296", "2147483648", "+5", "\t5"] {
            assert_eq!(r(bad), None, "{bad:?}");
        }
    }
}
