//! Field rules shared by the socket events and the admin API (contract §3 and §6), so
//! `message:send` and `POST /api/v1/messages` refuse the same content with the same words.

/// Largest `limit` of `message:history` and `GET …/messages`; larger values are capped
/// (contract §3: "a `limit` over 100 is capped at 100"). Backends cap at it too.
pub const MAX_HISTORY_LIMIT: u32 = 100;

/// `limit` when the request names none.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Longest `clientMsgId`, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 128;

/// Refuses a NUL character (`\u0000`) in `field`: PostgreSQL's `text` cannot hold one, so
/// both stores refuse it here alike, before it can reach (and fail) a write batch.
///
/// # Errors
/// Names the field and where the NUL is.
pub fn refuse_nul(field: &str, value: &str) -> Result<(), String> {
    match value.chars().position(|c| c == '\0').map(|i| i + 1) {
        None => Ok(()),
        Some(at) => Err(format!(
            "{field} contains a NUL character (\\u0000) at character {at}, which cannot be stored; remove it"
        )),
    }
}

/// Whether chat text may hold `c`: every Unicode scalar value but the control characters
/// (general category Cc: U+0000–U+001F, U+007F–U+009F), except tab, line feed and carriage
/// return. They draw nothing, can rewrite a terminal or a log line that shows them, and
/// some stores cannot hold them. U+0000 is left to the store-fit rule (NUL), which names it
/// on its own.
fn is_refused_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\0')
}

/// The first control character `text` may not hold, as `U+XXXX at character N` (from 1).
fn refused_control(text: &str) -> Option<String> {
    text.chars().position(is_refused_control).map(|i| {
        let c = text.chars().nth(i).unwrap_or_default();
        format!(
            "control character U+{:04X} at character {}",
            c as u32,
            i + 1
        )
    })
}

/// Checks message content: not empty or whitespace only, no NUL ([`refuse_nul`]), at most
/// `max_chars` Unicode scalar values, and no control character but tab, line feed and
/// carriage return (contract §3, `docs/protocol.md`). Returns the content unchanged.
///
/// # Errors
/// A sentence naming the rule that failed (and the count, for a long message).
pub fn validate_content(content: &str, max_chars: usize) -> Result<String, String> {
    if content.trim().is_empty() {
        return Err(
            "content is empty: send at least one character that is not whitespace".to_owned(),
        );
    }
    refuse_nul("content", content)?;
    // A UTF-8 string has at least as many bytes as scalar values, so short ones pass at once.
    if content.len() > max_chars {
        let chars = content.chars().count();
        if chars > max_chars {
            return Err(format!(
                "content has {chars} characters; the limit is {max_chars}"
            ));
        }
    }
    if let Some(found) = refused_control(content) {
        return Err(format!(
            "content holds {found}; chat text may hold no control character but tab, \
             line feed and carriage return"
        ));
    }
    Ok(content.to_owned())
}

/// Checks an idempotency key: 1 to 128 bytes, no NUL ([`refuse_nul`]).
///
/// # Errors
/// Says what is wrong with it.
pub fn validate_client_msg_id(id: &str) -> Result<String, String> {
    if id.is_empty() {
        return Err("clientMsgId is empty: omit it or send a non-empty string".to_owned());
    }
    if id.len() > MAX_CLIENT_MSG_ID_BYTES {
        return Err(format!(
            "clientMsgId is {} bytes long; the limit is {MAX_CLIENT_MSG_ID_BYTES}",
            id.len()
        ));
    }
    refuse_nul("clientMsgId", id)?;
    if let Some(found) = id
        .chars()
        .position(|c| c.is_control() && c != '\0')
        .map(|i| i + 1)
    {
        return Err(format!(
            "clientMsgId holds a control character at character {found}; use printable \
             characters only (a uuid is best)"
        ));
    }
    Ok(id.to_owned())
}

/// The history page size: `None` is 50, 1..=100 as given, over 100 capped at 100
/// (contract §3).
///
/// # Errors
/// Zero or a negative number.
pub fn history_limit(limit: Option<i64>) -> Result<u32, String> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(n) if n < 1 => Err(format!(
            "limit {n} is out of range: use 1 to {MAX_HISTORY_LIMIT}"
        )),
        Some(n) => Ok(n.min(i64::from(MAX_HISTORY_LIMIT)) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_must_not_be_blank() {
        for blank in ["", " ", "\n\t ", "\u{3000}"] {
            let err = validate_content(blank, 10).unwrap_err();
            assert!(err.contains("empty"), "{err}");
        }
        assert_eq!(validate_content("  hi  ", 10).unwrap(), "  hi  ");
    }

    #[test]
    fn content_is_counted_in_scalar_values() {
        // Four bytes each, but one scalar value each.
        assert!(validate_content(&"😀".repeat(4000), 4000).is_ok());
        let err = validate_content(&"😀".repeat(4001), 4000).unwrap_err();
        assert_eq!(err, "content has 4001 characters; the limit is 4000");
        assert!(validate_content(&"a".repeat(4000), 4000).is_ok());
        assert!(validate_content(&"a".repeat(4001), 4000).is_err());
    }

    #[test]
    fn control_characters_but_tab_and_newlines_are_refused() {
        assert!(validate_content("line 1\r\nline\t2\n", 100).is_ok());
        for (text, code, at) in [
            ("a\u{7}b", "U+0007", 2),
            ("\u{1b}[2J", "U+001B", 1),
            ("x\u{7f}", "U+007F", 2),
            ("😀\u{85}", "U+0085", 2),
            ("a\u{b}", "U+000B", 2),
        ] {
            let e = validate_content(text, 100).unwrap_err();
            assert!(
                e.contains(code) && e.contains(&format!("character {at};")),
                "{e}"
            );
        }
        // Not controls: format characters, emoji, other scripts.
        assert!(validate_content("\u{200d}👩‍👩‍👧 שלום", 100).is_ok());
        assert!(validate_client_msg_id("id\n1")
            .unwrap_err()
            .contains("character 3"));
    }

    #[test]
    fn client_msg_ids() {
        assert_eq!(validate_client_msg_id("m-1").unwrap(), "m-1");
        assert!(validate_client_msg_id("").unwrap_err().contains("empty"));
        assert!(validate_client_msg_id(&"x".repeat(129))
            .unwrap_err()
            .contains("129"));
    }

    #[test]
    fn a_nul_is_refused_in_content_and_client_msg_id() {
        let err = validate_content("ab\0c", 10).unwrap_err();
        assert_eq!(
            err,
            "content contains a NUL character (\\u0000) at character 3, which cannot be stored; remove it"
        );
        let err = validate_client_msg_id("\0").unwrap_err();
        assert!(err.starts_with("clientMsgId contains a NUL"), "{err}");
        // Tab, line feed and carriage return are the control characters chat text may hold.
        assert!(validate_content("a\tb\r\nc", 10).is_ok());
    }

    #[test]
    fn history_limits() {
        assert_eq!(history_limit(None), Ok(50));
        assert_eq!(history_limit(Some(1)), Ok(1));
        assert_eq!(history_limit(Some(100)), Ok(100));
        assert_eq!(history_limit(Some(101)), Ok(100));
        assert_eq!(history_limit(Some(i64::MAX)), Ok(100));
        assert!(history_limit(Some(0)).unwrap_err().contains("limit 0"));
        assert!(history_limit(Some(-5)).is_err());
    }
}
