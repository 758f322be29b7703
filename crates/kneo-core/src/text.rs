//! Text that is safe to print on one line: the one place messages are cleaned.

/// The longest message kept from a body or an error chain, in characters.
pub(crate) const MESSAGE_CAP: usize = 300;

/// `true` for a character that must not reach a one-line message: every
/// control character (C0, DEL, C1, so also U+0085 NEXT LINE) and the Unicode
/// line and paragraph separators U+2028 and U+2029, which JSON-lines readers
/// such as Python's `str.splitlines` treat as line breaks.
pub(crate) fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` on one line: every line-breaking character replaced by a space,
/// trimmed, and capped at [`MESSAGE_CAP`] characters (with `…` when cut).
pub(crate) fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if breaks_lines(c) { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    match cleaned.char_indices().nth(MESSAGE_CAP) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unicode_line_break_becomes_a_space() {
        for brk in [
            "\n", "\r", "\u{b}", "\u{c}", "\u{1c}", "\u{1e}", "\u{85}", "\u{2028}", "\u{2029}",
        ] {
            let out = one_line(&format!("a{brk}b"));
            assert_eq!(out, "a b", "{brk:?}");
            assert_eq!(out.lines().count(), 1);
        }
    }

    #[test]
    fn long_text_is_capped_on_a_char_boundary() {
        let out = one_line(&"é".repeat(MESSAGE_CAP + 5));
        assert_eq!(out.chars().count(), MESSAGE_CAP + 1);
        assert!(out.ends_with('…'));
        assert_eq!(one_line("  short  "), "short");
    }
}
