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
///
/// Only the kept characters are copied: `text` may be a whole error body
/// (up to the body cap), and the message is a few hundred bytes of it.
pub(crate) fn one_line(text: &str) -> String {
    let mut chars = text
        .chars()
        .map(|c| if breaks_lines(c) { ' ' } else { c })
        .skip_while(|c| c.is_whitespace());
    let mut line: String = chars.by_ref().take(MESSAGE_CAP).collect();
    if chars.any(|c| !c.is_whitespace()) {
        line.push('…');
    } else {
        line.truncate(line.trim_end().len());
    }
    line
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
    fn trailing_space_past_the_cap_is_trimmed_not_cut() {
        let exact = "a".repeat(MESSAGE_CAP);
        assert_eq!(one_line(&format!("\n {exact} \r\n  ")), exact);
        let longer = format!("{exact} b");
        assert_eq!(one_line(&longer), format!("{exact}…"));
        // The cut keeps the space before the rest, as a cut mid-text does.
        let spaced = format!("{} {}", "a".repeat(MESSAGE_CAP - 1), "b");
        assert_eq!(
            one_line(&spaced),
            format!("{} …", "a".repeat(MESSAGE_CAP - 1))
        );
        assert_eq!(one_line(" \n\t "), "");
    }

    #[test]
    fn long_text_is_capped_on_a_char_boundary() {
        let out = one_line(&"é".repeat(MESSAGE_CAP + 5));
        assert_eq!(out.chars().count(), MESSAGE_CAP + 1);
        assert!(out.ends_with('…'));
        assert_eq!(one_line("  short  "), "short");
    }
}
