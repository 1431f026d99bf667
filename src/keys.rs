//! The DKIM key algorithm, shared by the code that makes and signs with keys (`dkim`) and the
//! code that keeps them (`store`).
//!
//! A leaf: it sits below both so that neither imports the other for this one type
//! (`dkim` uses `store`'s key store, `store` rows name the algorithm). Only the names live
//! here; making, reading and signing with keys is `dkim::keys`.

/// A DKIM key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// RSA with SHA-256 (`k=rsa`, `a=rsa-sha256`).
    Rsa,
    /// Ed25519 with SHA-256 (`k=ed25519`, `a=ed25519-sha256`, RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The `k=` value, also the name in the store and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }

    /// Parses [`Algorithm::name`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rsa" => Some(Self::Rsa),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}
