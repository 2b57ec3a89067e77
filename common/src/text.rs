//! Control characters in what a request carries. NUL cannot be stored at
//! all (PostgreSQL's `text` and `jsonb` refuse it: the statement fails, and
//! a saga whose write fails is claimed again for ever), and the other C0
//! controls have no place in an id, a name or a city and forge log lines.
//! Tab, line feed and carriage return stay allowed in free text (a
//! reason, a description).

use serde_json::Value;

/// Whether `c` is refused in request text: a C0 control character other
/// than tab, line feed and carriage return.
pub fn refused(c: char) -> bool {
    c < ' ' && !matches!(c, '\t' | '\n' | '\r')
}

/// The first refused character of `text`, if any.
pub fn first_refused(text: &str) -> Option<char> {
    text.chars().find(|&c| refused(c))
}

/// How a refused character is named in an error: `U+0000 (NUL)`.
pub fn describe(c: char) -> String {
    let name = match c {
        '\0' => " (NUL)",
        '\u{8}' => " (backspace)",
        '\u{1b}' => " (escape)",
        _ => "",
    };
    format!("U+{:04X}{name}", u32::from(c))
}

/// Where `value` holds a refused character, in a string or a key: its path
/// (`depart_city`, `steps[0].name`, the empty path for the value itself)
/// and the character.
pub fn refused_in(value: &Value) -> Option<(String, char)> {
    match value {
        Value::String(s) => first_refused(s).map(|c| (String::new(), c)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            refused_in(item).map(|(path, c)| (join(&format!("[{i}]"), &path), c))
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if let Some(c) = first_refused(key) {
                return Some((key.escape_debug().to_string(), c));
            }
            refused_in(item).map(|(path, c)| (join(&format!(".{key}"), &path), c))
        }),
        _ => None,
    }
    .map(|(path, c)| (path.trim_start_matches('.').to_owned(), c))
}

/// Writes each NUL in `value`'s strings and keys as the six characters
/// `\u0000`, so that PostgreSQL can store it; answers the path of the
/// first one, if there was any.
pub fn escape_nul(value: &mut Value) -> Option<String> {
    let escape = |s: &str| s.replace('\0', "\\u0000");
    match value {
        Value::String(s) if s.contains('\0') => {
            *s = escape(s);
            Some(String::new())
        }
        Value::Array(items) => {
            let mut first = None;
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(path) = escape_nul(item) {
                    first.get_or_insert_with(|| join(&format!("[{i}]"), &path));
                }
            }
            first
        }
        Value::Object(map) => {
            let mut first = None;
            for (mut key, mut item) in std::mem::take(map) {
                if key.contains('\0') {
                    key = escape(&key);
                    first.get_or_insert_with(|| key.clone());
                }
                if let Some(path) = escape_nul(&mut item) {
                    first.get_or_insert_with(|| join(&key, &path));
                }
                map.insert(key, item);
            }
            first
        }
        _ => None,
    }
}

fn join(head: &str, rest: &str) -> String {
    if rest.starts_with('[') || rest.is_empty() {
        format!("{head}{rest}")
    } else {
        format!("{head}.{rest}")
    }
}

/// Whether the JSON text `json` may hold a refused character: JSON carries
/// a control character in a string only escaped (`\u0000`, `\b`, `\f`),
/// so a text with no such escape holds none. One pass over the bytes; a
/// `true` is checked on the parsed value (`\\u0000` is a backslash and
/// text, not an escape).
pub fn may_hold_refused(json: &[u8]) -> bool {
    let mut at = 0;
    while let Some(found) = json.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let i = at + found;
        match json.get(i + 1) {
            Some(b'b' | b'f') => return true,
            Some(b'u') => {
                if let Some(&[b'0', b'0', hi, lo]) = json.get(i + 2..i + 6)
                    && matches!(hi, b'0' | b'1')
                    && !(hi == b'0' && matches!(lo, b'9' | b'a' | b'A' | b'd' | b'D'))
                {
                    return true;
                }
            }
            _ => {}
        }
        // Past the escape's second byte: `\\` is one escaped backslash.
        at = i + 2;
    }
    false
}

/// Where a URL's path or query holds a refused character once
/// percent-decoded (`%00` to `%1F` but `%09`, `%0A`, `%0D`): `path`, or
/// `query parameter <name>`; and the character.
pub fn refused_in_url(path: &str, query: Option<&str>) -> Option<(String, char)> {
    let encoded = |text: &str| {
        text.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && matches!(w[1], b'0' | b'1')
                && u8::from_str_radix(std::str::from_utf8(&w[1..]).unwrap_or("zz"), 16)
                    .is_ok_and(|b| refused(char::from(b)))
        })
    };
    if encoded(path) {
        let decoded = percent_decoded(path);
        if let Some(c) = first_refused(&decoded) {
            return Some(("path".to_owned(), c));
        }
    }
    let query = query.filter(|q| encoded(q))?;
    url::form_urlencoded::parse(query.as_bytes()).find_map(|(name, value)| {
        let c = first_refused(&name).or_else(|| first_refused(&value))?;
        Some((
            format!("query parameter {:?}", name.escape_debug().to_string()),
            c,
        ))
    })
}

fn percent_decoded(text: &str) -> String {
    // The path has no `+` for space: decode it as a query value would,
    // with `+` kept.
    let kept = text.replace('+', "%2B");
    url::form_urlencoded::parse(format!("x={kept}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn controls_but_tab_and_line_breaks_are_refused() {
        assert!(refused('\0') && refused('\u{1b}') && refused('\u{8}'));
        assert!(!refused('\t') && !refused('\n') && !refused('\r') && !refused(' '));
        assert!(!refused('é') && !refused('\u{7f}'));
        assert_eq!(describe('\0'), "U+0000 (NUL)");
    }

    #[test]
    fn the_path_of_a_refused_character_is_named() {
        assert_eq!(refused_in(&json!({"a": "fine\n", "b": 1})), None);
        assert_eq!(
            refused_in(&json!({"depart_city": "Det\u{0}roit"})),
            Some(("depart_city".into(), '\0'))
        );
        assert_eq!(
            refused_in(&json!({"steps": [{"name": "ok"}, {"name": "x\u{1}"}]})),
            Some(("steps[1].name".into(), '\u{1}'))
        );
        assert_eq!(
            refused_in(&json!({"a\u{0}": 1})),
            Some(("a\\0".into(), '\0'))
        );
        assert_eq!(refused_in(&json!("\u{0}")), Some((String::new(), '\0')));
    }

    #[test]
    fn nuls_are_escaped_where_they_are_and_the_first_is_named() {
        let mut answer =
            json!({"ok": "yes", "b": {"name": "x\u{0}y"}, "list": ["\u{0}"], "k\u{0}": 1});
        assert_eq!(escape_nul(&mut answer), Some("b.name".into()));
        assert_eq!(
            answer,
            json!({"ok": "yes", "b": {"name": "x\\u0000y"}, "list": ["\\u0000"], "k\\u0000": 1})
        );
        assert_eq!(escape_nul(&mut answer), None);
    }

    #[test]
    fn only_an_escape_of_a_refused_character_is_suspected() {
        for (text, suspect) in [
            (r#"{"a": "plain"}"#, false),
            (r#"{"a": "line\nbreak\ttab\r"}"#, false),
            (r#"{"a": "\u0009\u000a\u000D"}"#, false),
            (r#"{"a": "\u0000"}"#, true),
            (r#"{"a": "\u001b"}"#, true),
            (r#"{"a": "\u001F"}"#, true),
            (r#"{"a": "\b"}"#, true),
            (r#"{"a": "\\u0000"}"#, false),
            (r#"{"a": "\\\u0000"}"#, true),
            (r#"{"a": "\u0020"}"#, false),
            (r#"{"a": "\"#, false),
        ] {
            assert_eq!(may_hold_refused(text.as_bytes()), suspect, "{text}");
        }
    }

    #[test]
    fn a_url_with_an_encoded_control_is_named() {
        assert_eq!(
            refused_in_url("/trips", Some("before=1.%00")),
            Some(("query parameter \"before\"".into(), '\0'))
        );
        assert_eq!(
            refused_in_url("/sagas/travel/a%1Bb", None),
            Some(("path".into(), '\u{1b}'))
        );
        assert_eq!(refused_in_url("/trips", Some("a=%0A&b=%20")), None);
        assert_eq!(refused_in_url("/a%2500", Some("x=%2500")), None);
    }
}
