//! MTA-STS (`delivery/mta_sts.rs`): the `_mta-sts` TXT records and the policy file, both
//! from the destination domain's operator, or from whoever answers for it.
//!
//! Input: TXT records separated by LF up to the first NUL, then an MX host name up to the
//! next NUL, then the policy text.
//!
//! What must hold:
//! - an accepted TXT record yields an `id` of 1 to 32 letters and digits (RFC 8461 3.1);
//! - an accepted policy has version STSv1, a `max_age` of digits only (section 3.2:
//!   `1*10DIGIT`) capped at a year, lower-case MX patterns, at least one unless the mode is
//!   `none`, and written out again it reads back equal;
//! - an MX host matches a pattern only as section 4.1 says: the same name, or one more
//!   non-empty leftmost label before a `*.` pattern's suffix.

use super::Input;
use crate::delivery::mta_sts::{MAX_AGE_LIMIT, Mode, parse_policy, parse_txt};

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let txt = input.text(4096);
    let host = input.text(300);
    let policy_text = String::from_utf8_lossy(input.rest()).into_owned();

    let records: Vec<String> = txt.split('\n').map(str::to_string).collect();
    let id = match parse_txt(&records) {
        Ok(id) => {
            assert!(!id.is_empty() && id.len() <= 32, "id {id:?}");
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "id {id:?}");
            id
        }
        Err(_) => "fuzz".to_string(),
    };

    let Ok(policy) = parse_policy(&policy_text, &id) else {
        return;
    };
    assert_eq!(policy.id, id);
    assert!(policy.max_age.as_secs() <= MAX_AGE_LIMIT);
    for line in policy_text.split('\n') {
        if let Some((key, value)) = line.split_once(':')
            && key.trim() == "max_age"
        {
            let value = value.trim();
            assert!(
                !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()),
                "max_age {value:?} accepted"
            );
        }
    }
    assert!(policy.mode == Mode::None || !policy.mx.is_empty());
    for pattern in &policy.mx {
        assert!(
            !pattern.chars().any(|c| c.is_ascii_uppercase()),
            "{pattern:?}"
        );
    }
    let mut again = format!(
        "version: STSv1\r\nmode: {}\r\nmax_age: {}\r\n",
        policy.mode.name(),
        policy.max_age.as_secs()
    );
    for pattern in &policy.mx {
        again.push_str(&format!("mx: {pattern}\r\n"));
    }
    assert_eq!(
        parse_policy(&again, &id).as_ref(),
        Ok(&policy),
        "the policy written out again reads differently"
    );

    if policy.matches_mx(&host) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            policy.mx.iter().any(|p| match p.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                None => *p == host,
            }),
            "{host:?} matched {:?}",
            policy.mx
        );
    }
}
