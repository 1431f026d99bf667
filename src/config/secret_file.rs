//! Secrets kept in files of their own (a Kubernetes Secret mounted beside the config), so
//! that the config file, which a ConfigMap or a repository holds, carries none: the PostgreSQL
//! password (`store.password_file`), the Redis password (`quota.redis_password_file`), the
//! fleet secret (`handoff.secret_file`). Each is the file's first line without its line ending.
//! Errors name the key and the file, never the content.

use super::ConfigError;
use std::path::Path;

/// The first line of the file named by `key`: not empty, no control characters.
///
/// # Errors
/// The file cannot be read, or its first line is empty or has a control character.
pub fn first_line(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{key}: {}: cannot read: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(ConfigError(format!(
            "{key}: {}: the first line is empty",
            path.display()
        )));
    }
    if line.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "{key}: {}: the first line has a control character",
            path.display()
        )));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_without_its_ending_and_errors_that_name_the_key_not_the_secret() {
        let dir = crate::testutil::TempDir::new("secret-file");
        std::fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\r\nsecond line\n").unwrap();
        assert_eq!(
            first_line("quota.redis_password_file", &path).unwrap(),
            "s3cr3t-value"
        );
        std::fs::write(&path, "\nlater\n").unwrap();
        let e = first_line("quota.redis_password_file", &path).unwrap_err();
        assert_eq!(
            e.0,
            format!(
                "quota.redis_password_file: {}: the first line is empty",
                path.display()
            )
        );
        std::fs::write(&path, "s3cr3t\tvalue\n").unwrap();
        let e = first_line("store.password_file", &path).unwrap_err();
        assert!(
            e.0.starts_with("store.password_file: ") && !e.0.contains("s3cr3t"),
            "{e}"
        );
        let absent = dir.path().join("absent");
        let e = first_line("handoff.secret_file", &absent).unwrap_err();
        assert!(e.0.starts_with(&format!(
            "handoff.secret_file: {}: cannot read: ",
            absent.display()
        )));
    }
}
