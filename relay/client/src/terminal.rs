//! Message bodies made safe to print on a terminal.
//!
//! A body is whatever its sender chose. Printed as it is, a newline lets it
//! start a line of its own (`from <someone else's fingerprint>: ...`), an
//! escape sequence moves the cursor, clears the screen or rewrites the
//! window title, and a bidirectional override makes the text read in another
//! order than it is stored. [`escape`] turns a body into one line with
//! nothing a terminal interprets, and keeps ordinary text, in any script,
//! as it was.
//!
//! Escaped, each in a form that can be told apart from text and from the
//! others:
//!
//! | input | shown as |
//! | --- | --- |
//! | `\` | `\\` |
//! | newline, carriage return, tab | `\n`, `\r`, `\t` |
//! | other C0 controls (U+0000–U+001F, ESC included) and DEL | `\x00`–`\x1f`, `\x7f` |
//! | C1 controls U+0080–U+009F (CSI, NEL, …) | `\u{80}`–`\u{9f}` |
//! | line and paragraph separators U+2028, U+2029 | `\u{2028}`, `\u{2029}` |
//! | bidirectional controls: U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069 | `\u{…}` |
//! | bytes that are not UTF-8 | `\x80`–`\xff` (never ASCII, so never mistaken for a control) |

use std::fmt::Write as _;

/// `body` as one line of text a terminal shows literally (see the module
/// documentation for what is escaped and how).
pub fn escape(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn push_char(out: &mut String, c: char) {
    let _ = match c {
        '\\' => write!(out, "\\\\"),
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\t' => write!(out, "\\t"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => write!(out, "\\x{:02x}", u32::from(c)),
        c if needs_escape(c) => write!(out, "\\u{{{:x}}}", u32::from(c)),
        c => {
            out.push(c);
            Ok(())
        }
    };
}

/// Non-ASCII characters a terminal acts on instead of showing.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{80}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_is_unchanged() {
        for text in [
            "hello bob",
            "Grüße aus Zürich — ça va? ½ € 'quoted' \"too\"",
            "Здравствуйте, 你好, مرحبا, שלום, 🙂",
        ] {
            assert_eq!(escape(text.as_bytes()), text);
        }
    }

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        assert_eq!(
            escape(b"hi\nfrom 1234: forged\x1b[2J\r\tbell\x07 del\x7f nul\x00"),
            r"hi\nfrom 1234: forged\x1b[2J\r\tbell\x07 del\x7f nul\x00"
        );
        assert_eq!(escape(br"C:\temp\n"), r"C:\\temp\\n");
    }

    #[test]
    fn c1_separators_and_bidi_controls_are_escaped() {
        assert_eq!(
            escape("csi\u{9b}2J nel\u{85} ls\u{2028}ps\u{2029}".as_bytes()),
            r"csi\u{9b}2J nel\u{85} ls\u{2028}ps\u{2029}"
        );
        assert_eq!(
            escape("abc\u{202e}fed\u{202c} \u{2066}x\u{2069} \u{200f}\u{61c}".as_bytes()),
            r"abc\u{202e}fed\u{202c} \u{2066}x\u{2069} \u{200f}\u{61c}"
        );
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_bytes() {
        assert_eq!(
            escape(b"ok\xff\xfe end \xe2\x82"),
            r"ok\xff\xfe end \xe2\x82"
        );
    }

    proptest! {
        /// Whatever the body, the result is one line with no character a
        /// terminal interprets, and it maps back to exactly the body.
        #[test]
        fn any_body_is_one_inert_line_that_decodes_back(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let shown = escape(&body);
            prop_assert!(!shown.chars().any(|c| c.is_control() || needs_escape(c)), "{shown:?}");
            prop_assert_eq!(unescape(&shown), body);
        }

        #[test]
        fn any_text_without_controls_is_unchanged(text in "[^\\p{Cc}\\\\\u{2028}\u{2029}\u{61c}\u{200e}\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}]*") {
            prop_assert_eq!(escape(text.as_bytes()), text);
        }
    }

    /// The inverse of [`escape`], to show nothing is ambiguous.
    fn unescape(shown: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = shown;
        while let Some(c) = rest.chars().next() {
            rest = &rest[c.len_utf8()..];
            if c != '\\' {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            let kind = rest.chars().next().unwrap();
            rest = &rest[1..];
            match kind {
                '\\' => out.push(b'\\'),
                'n' => out.push(b'\n'),
                'r' => out.push(b'\r'),
                't' => out.push(b'\t'),
                'x' => {
                    out.push(u8::from_str_radix(&rest[..2], 16).unwrap());
                    rest = &rest[2..];
                }
                'u' => {
                    let end = rest.find('}').unwrap();
                    let code = u32::from_str_radix(&rest[1..end], 16).unwrap();
                    let c = char::from_u32(code).unwrap();
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    rest = &rest[end + 1..];
                }
                other => panic!("unknown escape \\{other}"),
            }
        }
        out
    }
}
