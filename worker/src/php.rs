//! A reader for PHP's `serialize()` format, enough to read the jobs a PHP publisher puts
//! (backq's `BackQ\Message\Process` objects).
//!
//! The format: `N;` null, `b:1;` bool, `i:-5;` int, `d:0.5;` float (also `INF`, `-INF`,
//! `NAN`), `s:LEN:"BYTES";` string (LEN counts bytes, the bytes are raw), `a:N:{K;V;...}`
//! array of N key/value pairs (keys are ints or strings), `O:LEN:"CLASS":N:{K;V;...}` object
//! with N properties. A private property's name is mangled as `\0CLASS\0NAME`, a protected
//! one's as `\0*\0NAME`. Custom-serialized objects (`C:`), enums (`E:`) and references
//! (`r:`, `R:`) are recognised and refused: nothing a Process message holds uses them.
//!
//! # Invariants
//! * It never allocates more than the input can hold: a count claims at most one element per
//!   two bytes of input left, since an element takes at least that many (`N;`).
//! * Nesting is limited to [`DEPTH_MAX`], so a hostile body cannot overflow the stack.
//! * The whole input must be one value (trailing whitespace aside).

use std::fmt;

/// The deepest nesting of arrays and objects read. A Process message nests two deep (the
/// object and its `env` or `commandline` array); 64 leaves room for any sane payload.
pub const DEPTH_MAX: usize = 64;

/// A PHP value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string: bytes, not necessarily UTF-8.
    Str(Vec<u8>),
    /// An array: ordered key/value pairs.
    Array(Vec<(Key, Value)>),
    /// An object: its class name and its properties, names as serialized (mangled).
    Object {
        /// The class name.
        class: Vec<u8>,
        /// The properties in order.
        props: Vec<(Key, Value)>,
    },
}

/// An array key (or property name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(Vec<u8>),
}

impl Value {
    /// The kind of value, as PHP's `gettype()` words it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "double",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::Object { .. } => "object",
        }
    }
}

impl Key {
    /// The key's bytes, as PHP would print it.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Key::Int(n) => n.to_string().into_bytes(),
            Key::Str(s) => s.clone(),
        }
    }

    /// A property name without its visibility mangling (`\0Class\0name` and `\0*\0name` are
    /// `name`).
    pub fn property_name(&self) -> Vec<u8> {
        match self {
            Key::Str(name) if name.first() == Some(&0) => match name[1..].iter().position(|&b| b == 0) {
                Some(at) => name[at + 2..].to_vec(),
                None => name.clone(),
            },
            key => key.to_bytes(),
        }
    }
}

/// Why a body is not a PHP-serialized value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Byte offset where reading failed.
    pub at: usize,
    /// What was wrong there.
    pub what: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Whether `body` starts the way a PHP-serialized value does, so that it is read as one (and
/// buried if it turns out malformed) rather than run as a command line.
pub fn looks_serialized(body: &[u8]) -> bool {
    let digit_after =
        |prefix: &[u8]| body.strip_prefix(prefix).and_then(|rest| rest.first()).is_some_and(u8::is_ascii_digit);
    body == b"N;"
        || [&b"O:"[..], b"C:", b"E:", b"a:", b"s:", b"i:", b"d:", b"r:", b"R:"].iter().any(|prefix| digit_after(prefix))
        || body.starts_with(b"i:-")
        || body.starts_with(b"d:-")
        || body == b"b:0;"
        || body == b"b:1;"
        || body.starts_with(b"d:INF;")
        || body.starts_with(b"d:NAN;")
}

/// Reads one value that must be the whole input (trailing ASCII whitespace aside).
pub fn unserialize(input: &[u8]) -> Result<Value, Error> {
    let mut reader = Reader { input, at: 0 };
    let value = reader.value(0)?;
    if input[reader.at..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(reader.error("data after the value"));
    }
    Ok(value)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, what: impl Into<String>) -> Error {
        Error { at: self.at, what: what.into() }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), Error> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected {:?}", char::from(byte))))
        }
    }

    /// The bytes up to (not including) the next `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], Error> {
        let rest = &self.input[self.at..];
        let Some(len) = rest.iter().position(|&b| b == end) else {
            return Err(self.error(format!("no {:?} to end the value", char::from(end))));
        };
        let start = self.at;
        self.at += len + 1;
        Ok(&self.input[start..start + len])
    }

    fn integer(&mut self, end: u8) -> Result<i64, Error> {
        let at = self.at;
        let text = self.until(end)?;
        std::str::from_utf8(text)
            .ok()
            .filter(|t| !t.starts_with('+'))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| Error { at, what: "not an integer".to_owned() })
    }

    /// A count or a length: a non-negative integer.
    fn length(&mut self, end: u8) -> Result<usize, Error> {
        let at = self.at;
        let n = self.integer(end)?;
        usize::try_from(n).map_err(|_| Error { at, what: "negative length".to_owned() })
    }

    /// `LEN:"BYTES"` (the string of `s:`, the class name of `O:`), after the type letter's colon.
    fn quoted(&mut self) -> Result<Vec<u8>, Error> {
        let len = self.length(b':')?;
        self.expect(b'"')?;
        let Some(bytes) = self.input.get(self.at..).and_then(|rest| rest.get(..len)) else {
            return Err(self.error(format!("a string of {len} bytes runs past the end")));
        };
        let bytes = bytes.to_vec();
        self.at += len;
        self.expect(b'"')?;
        Ok(bytes)
    }

    /// How many elements a count may claim: at most one per two bytes left.
    fn capacity(&self, count: usize) -> Result<usize, Error> {
        let left = self.input.len() - self.at;
        if count > left / 2 {
            return Err(self.error(format!("a count of {count} is more than the input can hold")));
        }
        Ok(count)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let start = self.at;
        let Some(kind) = self.peek() else { return Err(self.error("the input ends before a value")) };
        self.at += 1;
        if kind == b'N' {
            self.expect(b';')?;
            return Ok(Value::Null);
        }
        self.expect(b':')?;
        match kind {
            b'b' => {
                let at = self.at;
                match self.until(b';')? {
                    b"0" => Ok(Value::Bool(false)),
                    b"1" => Ok(Value::Bool(true)),
                    _ => Err(Error { at, what: "a bool is 0 or 1".to_owned() }),
                }
            }
            b'i' => self.integer(b';').map(Value::Int),
            b'd' => {
                let at = self.at;
                let text = self.until(b';')?;
                float(text).map(Value::Float).ok_or(Error { at, what: "not a float".to_owned() })
            }
            b's' => {
                let bytes = self.quoted()?;
                self.expect(b';')?;
                Ok(Value::Str(bytes))
            }
            b'a' => {
                let pairs = self.pairs(depth)?;
                Ok(Value::Array(pairs))
            }
            b'O' => {
                let class = self.quoted()?;
                self.expect(b':')?;
                let props = self.pairs(depth)?;
                Ok(Value::Object { class, props })
            }
            b'C' => {
                let class = self.quoted()?;
                let class = String::from_utf8_lossy(&class);
                let what = format!("a custom-serialized object of class {class:?} (Serializable) cannot be read");
                Err(Error { at: start, what })
            }
            b'E' => Err(Error { at: start, what: "an enum cannot be read".to_owned() }),
            b'r' | b'R' => Err(Error { at: start, what: "a reference cannot be read".to_owned() }),
            other => Err(Error { at: start, what: format!("unknown type {:?}", char::from(other)) }),
        }
    }

    /// `N:{KEY VALUE ...}` of arrays and objects, after the type's colon (and class).
    fn pairs(&mut self, depth: usize) -> Result<Vec<(Key, Value)>, Error> {
        if depth >= DEPTH_MAX {
            return Err(self.error(format!("nested deeper than {DEPTH_MAX}")));
        }
        let count = self.length(b':')?;
        self.expect(b'{')?;
        let mut pairs = Vec::with_capacity(self.capacity(count)?);
        for _ in 0..count {
            let at = self.at;
            let key = match self.value(depth + 1)? {
                Value::Int(n) => Key::Int(n),
                Value::Str(s) => Key::Str(s),
                other => return Err(Error { at, what: format!("a key cannot be {}", other.type_name()) }),
            };
            let value = self.value(depth + 1)?;
            pairs.push((key, value));
        }
        self.expect(b'}')?;
        Ok(pairs)
    }
}

/// A float as PHP writes it: a decimal number with an optional exponent, or INF, -INF, NAN.
fn float(text: &[u8]) -> Option<f64> {
    match text {
        b"INF" => Some(f64::INFINITY),
        b"-INF" => Some(f64::NEG_INFINITY),
        b"NAN" => Some(f64::NAN),
        _ => {
            let text = std::str::from_utf8(text).ok()?;
            // Rust would also take "inf", "nan" and "infinity"; PHP never writes them.
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
                return None;
            }
            text.parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::Str(text.as_bytes().to_vec())
    }

    #[test]
    fn scalars() {
        assert_eq!(unserialize(b"N;"), Ok(Value::Null));
        assert_eq!(unserialize(b"b:1;"), Ok(Value::Bool(true)));
        assert_eq!(unserialize(b"b:0;"), Ok(Value::Bool(false)));
        assert_eq!(unserialize(b"i:-42;"), Ok(Value::Int(-42)));
        assert_eq!(unserialize(b"i:9223372036854775807;"), Ok(Value::Int(i64::MAX)));
        assert_eq!(unserialize(b"d:0.5;"), Ok(Value::Float(0.5)));
        assert_eq!(unserialize(b"d:60;"), Ok(Value::Float(60.0)));
        assert_eq!(unserialize(b"d:1.0E+25;"), Ok(Value::Float(1.0e25)));
        assert_eq!(unserialize(b"d:-INF;"), Ok(Value::Float(f64::NEG_INFINITY)));
        assert!(matches!(unserialize(b"d:NAN;"), Ok(Value::Float(f)) if f.is_nan()));
        // A string's length counts bytes: "é" is two, and quotes inside need no escaping.
        assert_eq!(unserialize("s:5:\"é\"\"x\";".as_bytes()), Ok(s("é\"\"x")));
        assert_eq!(unserialize(b"s:3:\"a\0b\";"), Ok(Value::Str(b"a\0b".to_vec())));
        assert_eq!(unserialize(b"s:0:\"\";\n"), Ok(s("")));
    }

    #[test]
    fn arrays_and_objects() {
        let list = unserialize(b"a:2:{i:0;s:2:\"ls\";i:1;s:2:\"-l\";}").expect("list");
        assert_eq!(list, Value::Array(vec![(Key::Int(0), s("ls")), (Key::Int(1), s("-l"))]));
        let object = unserialize(b"O:3:\"A\\B\":2:{s:6:\"\0A\\B\0x\";i:1;s:4:\"\0*\0y\";N;}").expect("object");
        let Value::Object { class, props } = object else { panic!("not an object") };
        assert_eq!(class, b"A\\B");
        assert_eq!(props[0].0.property_name(), b"x");
        assert_eq!(props[1].0.property_name(), b"y");
        assert_eq!(Key::Str(b"public".to_vec()).property_name(), b"public");
        assert_eq!(Key::Int(7).property_name(), b"7");
    }

    #[test]
    fn malformed_input_says_where() {
        let cases: [(&[u8], &str); 14] = [
            (b"", "the input ends before a value at byte 0"),
            (b"s:9:\"abc\";", "a string of 9 bytes runs past the end at byte 5"),
            (b"s:2:\"abc\";", "expected '\"' at byte 7"),
            (b"i:12", "no ';' to end the value at byte 2"),
            (b"i:+1;", "not an integer at byte 2"),
            (b"i:1;x", "data after the value at byte 4"),
            (b"b:2;", "a bool is 0 or 1 at byte 2"),
            (b"d:inf;", "not a float at byte 2"),
            (b"s:-1:\"\";", "negative length at byte 2"),
            (b"a:1000000:{}", "a count of 1000000 is more than the input can hold at byte 11"),
            (b"a:1:{a:0:{}i:1;}", "a key cannot be array at byte 5"),
            (
                b"C:3:\"Foo\":1:{x}",
                "a custom-serialized object of class \"Foo\" (Serializable) cannot be read at byte 0",
            ),
            (b"a:1:{i:0;r:1;}", "a reference cannot be read at byte 9"),
            (b"x:1;", "unknown type 'x' at byte 0"),
        ];
        for (input, error) in cases {
            assert_eq!(unserialize(input).map_err(|e| e.to_string()), Err(error.to_owned()), "{input:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "a:1:{i:0;".repeat(DEPTH_MAX + 1) + "N;" + &"}".repeat(DEPTH_MAX + 1);
        let error = unserialize(deep.as_bytes()).unwrap_err();
        assert_eq!(error.what, format!("nested deeper than {DEPTH_MAX}"));
        let fine = "a:1:{i:0;".repeat(DEPTH_MAX) + "N;" + &"}".repeat(DEPTH_MAX);
        assert!(unserialize(fine.as_bytes()).is_ok());
    }

    #[test]
    fn what_looks_serialized() {
        for body in
            [&b"O:21:\"BackQ"[..], b"a:0:{}", b"s:1:\"x\";", b"i:5;", b"i:-5;", b"N;", b"b:1;", b"d:0.5;", b"C:3:"]
        {
            assert!(looks_serialized(body), "{body:?}");
        }
        for body in [&b"echo hi"[..], b"a:b", b"sleep 1", b"N; rm", b"b:", b"O:x", b"{\"argv\":[]}", b"i:x"] {
            assert!(!looks_serialized(body), "{body:?}");
        }
    }
}
