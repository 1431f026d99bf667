//! Where delivery's trust comes from: the CA roots of MTA-STS (`[mta_sts] roots`) and the
//! DNSSEC trust anchor file (`[dns] trust_anchor`), both checked when the config is read.
//!
//! The anchor file is parsed here, once ([`crate::dnssec`] knows the format); its DS lines
//! still need DNS lookups, which happen when delivery builds its resolver. The roots are only
//! named here: loading a PEM file or the system store is delivery's (`delivery::mta_sts`),
//! as before, so a root file is checked for existence, not parsed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dnssec::{TrustAnchorFile, load_trust_anchors};

/// `[mta_sts] roots`: `webpki`, `system`, or the path of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum MtaStsRoots {
    /// The operating system's store (rustls-native-certs).
    System,
    /// The Mozilla root set compiled in (webpki-roots).
    WebPki,
    /// The certificates of a PEM file.
    File(PathBuf),
}

impl TryFrom<String> for MtaStsRoots {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "webpki" => Ok(Self::WebPki),
            "system" => Ok(Self::System),
            path if Path::new(path).is_file() => Ok(Self::File(PathBuf::from(path))),
            _ => Err("must be webpki, system, or the path of a PEM file of CA certificates"),
        }
    }
}

/// `[dns] trust_anchor`: the file's path (error logs name it) and what it holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PathBuf")]
pub struct TrustAnchor {
    /// As written in the config.
    pub path: PathBuf,
    /// Its DNSKEY and DS lines.
    pub anchors: TrustAnchorFile,
}

impl TryFrom<PathBuf> for TrustAnchor {
    type Error = String;

    fn try_from(path: PathBuf) -> Result<Self, Self::Error> {
        let anchors = load_trust_anchors(&path)?;
        Ok(Self { path, anchors })
    }
}
