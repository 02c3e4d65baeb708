//! Reading the YAML documents of `stats`, `stats-tube`, `stats-job` and the `list-*` commands.
//!
//! The documents are parsed by a real YAML parser (saphyr-parser), event by event, so quoting
//! and escapes are handled as YAML has them: runnerbean double-quotes strings, C beanstalkd
//! writes most of them plain. Values are kept as the text the server wrote, never as the type
//! a YAML schema would guess: a tube named `123` or `null` stays that name, and each stats
//! field converts its own text to its own type.
//!
//! One repair: C beanstalkd 1.12 writes `os:` unquoted, and a kernel version string starts
//! with `#` (`os: #1 SMP PREEMPT_DYNAMIC ...`), which YAML reads as a comment and so as an empty
//! value. When a plain value is empty, the text after `key:` on the key's own line is taken
//! instead, so the field still carries what the server meant.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A mapping of scalars, in the document's order.
pub(crate) fn mapping(doc: &str) -> Result<Vec<(String, String)>, String> {
    let mut events = Events::new(doc);
    events.expect_start()?;
    match events.next()? {
        (Event::MappingStart(..), _) => {}
        // An empty document (`---` alone) is YAML's null: no keys at all.
        (Event::Scalar(value, ScalarStyle::Plain, ..), span) if plain_is_empty(&value, span) => {
            events.expect_end()?;
            return Ok(Vec::new());
        }
        (other, _) => return Err(format!("expected a mapping, found {other:?}")),
    }
    let mut pairs = Vec::new();
    loop {
        let (key, key_span) = match events.next()? {
            (Event::MappingEnd, _) => break,
            (Event::Scalar(key, ..), span) => (key.into_owned(), span),
            (other, _) => return Err(format!("expected a key, found {other:?}")),
        };
        let value = match events.next()? {
            (Event::Scalar(value, ScalarStyle::Plain, ..), span) if plain_is_empty(&value, span) => {
                raw_value(doc, key_span, &key)
            }
            (Event::Scalar(value, ..), _) => value.into_owned(),
            (other, _) => return Err(format!("expected a value for {key:?}, found {other:?}")),
        };
        pairs.push((key, value));
    }
    events.expect_end()?;
    Ok(pairs)
}

/// A sequence of scalars, in the document's order.
pub(crate) fn sequence(doc: &str) -> Result<Vec<String>, String> {
    let mut events = Events::new(doc);
    events.expect_start()?;
    match events.next()? {
        (Event::SequenceStart(..), _) => {}
        (Event::Scalar(value, ScalarStyle::Plain, ..), span) if plain_is_empty(&value, span) => {
            events.expect_end()?;
            return Ok(Vec::new());
        }
        (other, _) => return Err(format!("expected a list, found {other:?}")),
    }
    let mut items = Vec::new();
    loop {
        match events.next()? {
            (Event::SequenceEnd, _) => break,
            (Event::Scalar(item, ..), _) => items.push(item.into_owned()),
            (other, _) => return Err(format!("expected a list item, found {other:?}")),
        }
    }
    events.expect_end()?;
    Ok(items)
}

/// Whether a plain scalar is YAML's empty (null) value: saphyr writes an absent value as `~`
/// with an empty span.
fn plain_is_empty(value: &str, span: Span) -> bool {
    value.is_empty() || (value == "~" && span.start.index() == span.end.index())
}

/// The text after `key:` on the line where the key starts, trimmed.
fn raw_value(doc: &str, key_span: Span, key: &str) -> String {
    let line = doc.lines().nth(key_span.start.line().saturating_sub(1)).unwrap_or_default();
    line.trim_start().strip_prefix(key).and_then(|rest| rest.strip_prefix(':')).unwrap_or_default().trim().to_owned()
}

struct Events<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> Events<'a> {
    fn new(doc: &'a str) -> Events<'a> {
        Events { parser: Parser::new_from_str(doc) }
    }

    fn next(&mut self) -> Result<(Event<'a>, Span), String> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(format!("YAML: {e}")),
            None => Err("YAML: the document ends early".to_owned()),
        }
    }

    fn expect_start(&mut self) -> Result<(), String> {
        match self.next()? {
            (Event::StreamStart, _) => {}
            (other, _) => return Err(format!("expected the start of a document, found {other:?}")),
        }
        match self.next()? {
            (Event::DocumentStart(_), _) => Ok(()),
            (other, _) => Err(format!("expected the start of a document, found {other:?}")),
        }
    }

    fn expect_end(&mut self) -> Result<(), String> {
        match self.next()? {
            (Event::DocumentEnd, _) => {}
            (other, _) => return Err(format!("expected the end of the document, found {other:?}")),
        }
        match self.next()? {
            (Event::StreamEnd, _) => Ok(()),
            (other, _) => Err(format!("expected one document only, found {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(doc: &str) -> Vec<(String, String)> {
        mapping(doc).unwrap()
    }

    #[test]
    fn plain_and_quoted_values_are_kept_as_the_server_wrote_them() {
        let doc =
            "---\nname: \"a\\\"b\"\ncount: 0123\nflag: false\nnull-ish: null\nreal: 0.001728\nversion: \"1.12\"\n";
        let expected = [
            ("name", "a\"b"),
            ("count", "0123"),
            ("flag", "false"),
            ("null-ish", "null"),
            ("real", "0.001728"),
            ("version", "1.12"),
        ];
        let got = pairs(doc);
        assert_eq!(got.len(), expected.len());
        for ((k, v), (ek, ev)) in got.iter().zip(expected) {
            assert_eq!((k.as_str(), v.as_str()), (ek, ev));
        }
    }

    #[test]
    fn an_unquoted_value_that_yaml_reads_as_a_comment_is_recovered() {
        let doc = "---\nhostname: vm\nos: #1 SMP PREEMPT_DYNAMIC @0\nplatform: x86_64\nempty:\n";
        let got = pairs(doc);
        assert_eq!(got[1], ("os".to_owned(), "#1 SMP PREEMPT_DYNAMIC @0".to_owned()));
        assert_eq!(got[2], ("platform".to_owned(), "x86_64".to_owned()));
        assert_eq!(got[3], ("empty".to_owned(), String::new()));
    }

    #[test]
    fn lists_keep_names_that_look_like_other_types() {
        assert_eq!(
            sequence("---\n- default\n- 123\n- \"null\"\n- null\n- 1e3\n").unwrap(),
            ["default", "123", "null", "null", "1e3"]
        );
        assert_eq!(sequence("---\n").unwrap(), Vec::<String>::new());
        assert_eq!(mapping("---\n").unwrap(), Vec::<(String, String)>::new());
    }

    #[test]
    fn documents_of_the_wrong_shape_are_errors() {
        assert!(mapping("---\n- a\n").is_err());
        assert!(sequence("---\na: b\n").is_err());
        assert!(mapping("---\na: [1, 2]\n").is_err());
        assert!(mapping("---\na: b\n---\nc: d\n").is_err());
        assert!(mapping("---\n\"a: b\n").is_err());
    }
}
