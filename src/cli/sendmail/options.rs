//! The `postern sendmail` command line, read sendmail-style (bundled flags, `-fSENDER` and
//! `-f SENDER`, `-oi`): which options exist and what each means is in the parent module's
//! documentation. Every problem is a [`Failure::Usage`] (exit 64). The one long option,
//! `--config PATH` (or `--config=PATH`), may stand anywhere before `--`: PHP's
//! `sendmail_path` is written `postern sendmail -t -i --config /etc/postern/postern.toml`.

use super::Failure;
use super::address::{address_list, plausible_address};
use crate::session::headers::mailbox_addresses;
use std::path::PathBuf;

/// The parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Options {
    /// `-t`
    pub(super) extract: bool,
    /// `-i`, `-oi`
    pub(super) ignore_dots: bool,
    /// `-f`, `-r`: `Some("")` is the null sender.
    pub(super) sender: Option<String>,
    /// `-F`
    pub(super) full_name: Option<String>,
    /// Recipient arguments, split into addresses.
    pub(super) recipients: Vec<String>,
    /// `--config PATH`: overrides the `postern --config` given before `sendmail`.
    pub(super) config: Option<PathBuf>,
}

/// The long option that names the config file.
const CONFIG_OPTION: &str = "--config";

/// Parses sendmail options (see the module documentation).
pub(super) fn parse_options(args: &[String]) -> Result<Options, Failure> {
    let usage = |m: String| Failure::Usage(m);
    let mut options = Options::default();
    let mut args = args.iter();
    let mut only_recipients = false;
    while let Some(arg) = args.next() {
        if only_recipients || !arg.starts_with('-') {
            options
                .recipients
                .extend(argument_recipients(arg).map_err(usage)?);
            continue;
        }
        if arg == "--" {
            only_recipients = true;
            continue;
        }
        if arg == CONFIG_OPTION {
            let path = args
                .next()
                .filter(|path| !path.is_empty())
                .ok_or_else(|| usage(format!("option {CONFIG_OPTION} needs a value")))?;
            options.config = Some(PathBuf::from(path));
            continue;
        }
        if let Some(path) = arg
            .strip_prefix(CONFIG_OPTION)
            .and_then(|r| r.strip_prefix('='))
        {
            if path.is_empty() {
                return Err(usage(format!("option {CONFIG_OPTION} needs a value")));
            }
            options.config = Some(PathBuf::from(path));
            continue;
        }
        if arg == "-" || arg.starts_with("--") {
            return Err(usage(format!("unknown option {arg}")));
        }
        let flags = &arg[1..];
        for (at, flag) in flags.char_indices() {
            match flag {
                't' => options.extract = true,
                'i' => options.ignore_dots = true,
                'v' | 'm' | 'n' => {}
                'f' | 'r' | 'F' | 'o' | 'O' | 'B' | 'N' | 'R' | 'V' | 'b' => {
                    let rest = &flags[at + flag.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next()
                            .cloned()
                            .ok_or_else(|| usage(format!("option -{flag} needs a value")))?
                    } else {
                        rest.to_string()
                    };
                    apply_valued(&mut options, flag, value).map_err(usage)?;
                    break;
                }
                other => return Err(usage(format!("unknown option -{other}"))),
            }
        }
    }
    Ok(options)
}

/// Applies an option that takes a value.
fn apply_valued(options: &mut Options, flag: char, value: String) -> Result<(), String> {
    match flag {
        'f' | 'r' => {
            let trimmed = value.trim();
            let sender = if trimmed.is_empty() || trimmed == "<>" {
                String::new()
            } else {
                let addresses = mailbox_addresses(trimmed);
                match addresses.as_slice() {
                    [one] if plausible_address(one) => one.clone(),
                    _ => return Err(format!("invalid sender address {value:?}")),
                }
            };
            options.sender = Some(sender);
        }
        'F' => {
            if value.chars().any(char::is_control) {
                return Err(format!("invalid full name {value:?}"));
            }
            options.full_name = Some(value);
        }
        'o' if value == "i" => options.ignore_dots = true,
        'b' if value == "m" => {}
        'b' => {
            return Err(format!(
                "-b{value} is not supported: only -bm (read a message from standard input)"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The addresses of a recipient argument (`a@x`, `a@x,b@y`, `Name <a@x>`).
fn argument_recipients(arg: &str) -> Result<Vec<String>, String> {
    let addresses = address_list(arg);
    if let Some(bad) = addresses.iter().find(|a| !plausible_address(a)) {
        return Err(format!("invalid recipient {bad:?}"));
    }
    if addresses.is_empty() {
        return Err(format!("invalid recipient {arg:?}"));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::sendmail::EX_USAGE;
    use crate::cli::sendmail::tests::{args, options};

    fn usage_error(list: &[&str]) -> String {
        match parse_options(&args(list)) {
            Err(Failure::Usage(m)) => m,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn php_style_options() {
        let o = options(&["-t", "-i"]);
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender, None);
        let o = options(&[
            "-ti",
            "-oi",
            "-fwww@example.org",
            "-F",
            "Web Shop",
            "a@x.org",
        ]);
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("www@example.org"));
        assert_eq!(o.full_name.as_deref(), Some("Web Shop"));
        assert_eq!(o.recipients, ["a@x.org"]);
        let o = options(&[
            "-f",
            "Shop <Shop@Example.org>",
            "-oi",
            "b@y.org, \"C\" <c@z.org>",
        ]);
        assert_eq!(o.sender.as_deref(), Some("shop@example.org"));
        assert!(o.ignore_dots && !o.extract);
        assert_eq!(o.recipients, ["b@y.org", "c@z.org"]);
        assert_eq!(
            options(&["-f", "<>", "a@x.org"]).sender.as_deref(),
            Some("")
        );
        assert_eq!(
            options(&["-r", "s@x.org", "a@x.org"]).sender.as_deref(),
            Some("s@x.org")
        );
        let o = options(&[
            "-odi",
            "-oem",
            "-v",
            "-bm",
            "-N",
            "never",
            "-B8BITMIME",
            "--",
            "a@x.org",
        ]);
        assert!(!o.ignore_dots);
        assert_eq!(o.recipients, ["a@x.org"]);
        assert!(options(&["-Fname", "a@x.org"]).full_name.as_deref() == Some("name"));
    }

    #[test]
    fn config_option_anywhere() {
        let o = options(&["-t", "-i", "--config", "/etc/postern/postern.toml"]);
        assert!(o.extract && o.ignore_dots && o.recipients.is_empty());
        assert_eq!(
            o.config.as_deref(),
            Some(std::path::Path::new("/etc/postern/postern.toml"))
        );
        let o = options(&["--config=/a.toml", "-f", "s@x.org", "a@x.org"]);
        assert_eq!(o.config.as_deref(), Some(std::path::Path::new("/a.toml")));
        assert_eq!(o.recipients, ["a@x.org"]);
        assert_eq!(o.sender.as_deref(), Some("s@x.org"));
        let o = options(&["a@x.org", "--config", "/b.toml", "--config=/c.toml"]);
        assert_eq!(o.config.as_deref(), Some(std::path::Path::new("/c.toml")));
        assert_eq!(options(&["-t"]).config, None);
        // After `--` it is a recipient argument like any other word.
        assert_eq!(
            usage_error(&["--", "--config"]),
            "invalid recipient \"--config\""
        );
        assert_eq!(
            usage_error(&["-t", "--config"]),
            "option --config needs a value"
        );
        assert_eq!(usage_error(&["--config="]), "option --config needs a value");
        assert_eq!(
            usage_error(&["--configx=/a"]),
            "unknown option --configx=/a"
        );
    }

    #[test]
    fn bad_options_are_usage_errors() {
        assert_eq!(usage_error(&["-x", "a@x.org"]), "unknown option -x");
        assert_eq!(usage_error(&["-tq"]), "unknown option -q");
        assert_eq!(usage_error(&["--help"]), "unknown option --help");
        assert_eq!(usage_error(&["-"]), "unknown option -");
        assert_eq!(usage_error(&["a@x.org", "-f"]), "option -f needs a value");
        assert!(usage_error(&["-bs"]).starts_with("-bs is not supported"));
        assert_eq!(
            usage_error(&["-f", "not an address"]),
            "invalid sender address \"not an address\""
        );
        assert_eq!(usage_error(&["root"]), "invalid recipient \"root\"");
        assert_eq!(usage_error(&[","]), "invalid recipient \",\"");
        assert_eq!(
            parse_options(&args(&["-x"])).unwrap_err().status(),
            EX_USAGE
        );
    }
}
