//! Lexing: one line of the file into fields.
//!
//! Owns: white space between fields, double quotes and their two escapes
//! (`\"`, `\\`), comments, and telling an option field (`KEY=VALUE` with an
//! unquoted, identifier-shaped KEY) from a positional one. Never does: know
//! what a field means; that is `grammar`'s and `values`' business.

/// One white-space separated field, quotes and escapes already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Field {
    pub(super) text: String,
    /// Byte index of the `=` ending an unquoted `KEY`, when the field is an option.
    pub(super) key_end: Option<usize>,
}

impl Field {
    /// `(key, value)` when the field is `KEY=VALUE`.
    pub(super) fn option(&self) -> Option<(&str, &str)> {
        self.key_end
            .map(|end| (&self.text[..end], &self.text[end + 1..]))
    }
}

/// Splits a line (without its line end) into fields, dropping a comment.
///
/// # Errors
///
/// An unterminated quote; the message gives its column, not the text, which
/// may hold a password.
pub(super) fn split_fields(line: &str) -> Result<Vec<Field>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            break;
        }
        let mut text = String::new();
        let mut key_end = None;
        // Still reading what could be an unquoted `KEY` followed by `=`.
        let mut in_key = true;
        while i < chars.len() && !chars[i].is_ascii_whitespace() {
            let c = chars[i];
            if c == '"' {
                in_key = false;
                let opened_at = i + 1;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!(
                                "unterminated quote (opened at column {opened_at})"
                            ))
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\')) => {
                            text.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            text.push(c);
                            i += 1;
                        }
                    }
                }
                continue;
            }
            if in_key {
                if c == '=' && !text.is_empty() {
                    key_end = Some(text.len());
                    in_key = false;
                } else if !(c.is_ascii_alphabetic()
                    || (!text.is_empty() && (c.is_ascii_digit() || c == '-' || c == '_')))
                {
                    in_key = false;
                }
            }
            text.push(c);
            i += 1;
        }
        fields.push(Field { text, key_end });
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    fn fields(line: &str) -> Vec<String> {
        split_fields(line)
            .expect("line splits")
            .into_iter()
            .map(|f| f.text)
            .collect()
    }

    #[test]
    fn fields_split_on_spaces_and_tabs() {
        assert_eq!(fields("  a \t b\tc  "), ["a", "b", "c"]);
        assert_eq!(fields(""), Vec::<String>::new());
        assert_eq!(fields(" \t "), Vec::<String>::new());
    }

    #[test]
    fn comments_start_at_a_field_boundary_only() {
        assert_eq!(fields("# whole line"), Vec::<String>::new());
        assert_eq!(fields("   # indented"), Vec::<String>::new());
        assert_eq!(fields("a b # c d"), ["a", "b"]);
        assert_eq!(fields("a\t#c"), ["a"]);
        assert_eq!(fields("pa#ss x#y"), ["pa#ss", "x#y"]);
        assert_eq!(fields("\"#not\" b"), ["#not", "b"]);
        assert_eq!(fields("k=\"a # b\" #c"), ["k=a # b"]);
    }

    #[test]
    fn quotes_hold_spaces_and_escapes() {
        assert_eq!(fields(r#""a b" c"#), ["a b", "c"]);
        assert_eq!(fields(r#""say \"hi\"""#), [r#"say "hi""#]);
        assert_eq!(fields(r#""back\\slash""#), [r"back\slash"]);
        assert_eq!(fields(r#""CORP\jdoe""#), [r"CORP\jdoe"]);
        assert_eq!(fields(r"CORP\jdoe"), [r"CORP\jdoe"]);
        assert_eq!(fields(r#"ab"c d"ef"#), ["abc def"]);
        assert_eq!(fields(r#""""#), [""]);
        assert_eq!(fields(r#""\\" x"#), [r"\", "x"]);
        // Windows paths as a Notepad user writes them.
        assert_eq!(
            fields(r#"auth-file="C:\Program Files\ht\secret.txt" proxy-ca=D:\ca.pem"#),
            [
                r"auth-file=C:\Program Files\ht\secret.txt",
                r"proxy-ca=D:\ca.pem"
            ]
        );
    }

    #[test]
    fn option_key_must_be_unquoted_and_identifier_shaped() {
        let split = split_fields(r#"header="A: b c" "k=v" 9k=v a_b-c=1 =x http://u:p=q@h:1"#)
            .expect("splits");
        let options: Vec<Option<(&str, &str)>> = split.iter().map(Field::option).collect();
        assert_eq!(
            options,
            [
                Some(("header", "A: b c")),
                None,
                None,
                Some(("a_b-c", "1")),
                None,
                None
            ]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error_with_its_column() {
        assert_eq!(
            split_fields(r#"2222 h 22 header="A: b"#),
            Err("unterminated quote (opened at column 18)".to_string())
        );
        assert_eq!(
            err1("2222 h 22 auth=\"alice:pw\n"),
            "x.conf:1: unterminated quote (opened at column 16)"
        );
        assert_eq!(
            split_fields(r#""abc\""#),
            Err("unterminated quote (opened at column 1)".to_string())
        );
    }
}
