//! Unit tests of TLSA classification and the DANE verifier, with certificates made by rcgen.

use super::*;
use aws_lc_rs::digest;
use hickory_resolver::proto::dnssec::Proof;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn sha512(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA512, data).as_ref().to_vec()
}

fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

/// A self-signed leaf for `name` and its key.
fn self_signed(name: &str) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().clone(), key)
}

/// A CA and a leaf for `name` issued by it: (leaf, CA certificate, CA key).
fn ca_and_leaf(name: &str) -> (CertificateDer<'static>, CertificateDer<'static>, KeyPair) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    (leaf.der().clone(), ca.der().clone(), ca_key)
}

fn verifier(records: Vec<Tlsa>, names: &[&str]) -> DaneVerifier {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    DaneVerifier::new(
        records,
        names.iter().map(|n| n.to_string()).collect(),
        provider,
    )
}

#[test]
fn spki_is_the_keys_der() {
    let (cert, key) = self_signed("mx.example.org");
    assert_eq!(spki(&cert).unwrap(), key.subject_public_key_info());
}

#[test]
fn dane_ee_matches_spki_or_certificate_with_every_matching_type() {
    let (cert, key) = self_signed("whatever.invalid");
    let spki = key.subject_public_key_info();
    for record in [
        tlsa(3, 1, 1, sha256(&spki)),
        tlsa(3, 1, 2, sha512(&spki)),
        tlsa(3, 1, 0, spki.clone()),
        tlsa(3, 0, 1, sha256(cert.as_ref())),
        tlsa(3, 0, 2, sha512(cert.as_ref())),
        tlsa(3, 0, 0, cert.as_ref().to_vec()),
    ] {
        assert!(record.is_usable(), "{record}");
        assert!(record.matches(&cert), "{record}");
        // Row 14: names and dates are not checked for DANE-EE.
        verifier(vec![record.clone()], &["mx.example.org"])
            .check(&cert, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{record}: {e}"));
    }
}

#[test]
fn dane_ee_ignores_expiry() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["mx.example.org".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let cert = params.self_signed(&key).unwrap().der().clone();
    let record = tlsa(3, 1, 1, sha256(&key.subject_public_key_info()));
    assert!(
        verifier(vec![record], &[])
            .check(&cert, &[], UnixTime::now())
            .is_ok()
    );
}

#[test]
fn no_match_is_refused() {
    let (cert, _) = self_signed("mx.example.org");
    let (_, other) = self_signed("mx.example.org");
    let record = tlsa(3, 1, 1, sha256(&other.subject_public_key_info()));
    assert!(!record.matches(&cert));
    let e = verifier(vec![record], &["mx.example.org"])
        .check(&cert, &[], UnixTime::now())
        .unwrap_err();
    assert_eq!(e, DaneError::NoMatch);
    assert_eq!(e.reason(), "tlsa_mismatch");
}

#[test]
fn dane_ta_needs_the_chain_and_a_reference_name() {
    let (leaf, ca, ca_key) = ca_and_leaf("mx.example.org");
    let ta = tlsa(2, 1, 1, sha256(&ca_key.subject_public_key_info()));
    let now = UnixTime::now();
    let chain = [ca.clone()];
    // Row 15: chain to the TA, the MX name in the SAN.
    verifier(vec![ta.clone()], &["mx.example.org", "example.org"])
        .check(&leaf, &chain, now)
        .unwrap();
    // The destination domain as a reference identifier (RFC 7672 3.2.2).
    let (leaf2, ca2, ca2_key) = ca_and_leaf("example.org");
    let ta2 = tlsa(2, 0, 1, sha256(ca2.as_ref()));
    let _ = ca2_key;
    verifier(vec![ta2], &["mx.example.org", "example.org"])
        .check(&leaf2, &[ca2], now)
        .unwrap();
    // Row 16: chain fine, no reference name.
    let e = verifier(vec![ta.clone()], &["mx.other.org", "other.org"])
        .check(&leaf, &chain, now)
        .unwrap_err();
    assert!(matches!(e, DaneError::NameMismatch(_)), "{e}");
    assert_eq!(e.reason(), "name_mismatch");
    // The TA must be in the presented chain.
    assert_eq!(
        verifier(vec![ta.clone()], &["mx.example.org"])
            .check(&leaf, &[], now)
            .unwrap_err(),
        DaneError::NoMatch
    );
    // A DANE-TA record never authenticates the leaf as if it were DANE-EE.
    let leaf_as_ta = tlsa(2, 0, 1, sha256(leaf.as_ref()));
    assert_eq!(
        verifier(vec![leaf_as_ta], &["mx.example.org"])
            .check(&leaf, &[], now)
            .unwrap_err(),
        DaneError::NoMatch
    );
}

#[test]
fn dane_ta_chain_must_verify() {
    // The TA record names a CA that is in the chain, but the leaf was issued by another.
    let (leaf, _ca, _) = ca_and_leaf("mx.example.org");
    let (_, unrelated_ca, unrelated_key) = ca_and_leaf("x.example");
    let ta = tlsa(2, 1, 1, sha256(&unrelated_key.subject_public_key_info()));
    let e = verifier(vec![ta], &["mx.example.org"])
        .check(&leaf, &[unrelated_ca], UnixTime::now())
        .unwrap_err();
    assert!(matches!(e, DaneError::Chain(_)), "{e}");
    assert_eq!(e.reason(), "tlsa_mismatch");
}

#[test]
fn wildcard_names_match_one_label() {
    let (leaf, ca, ca_key) = ca_and_leaf("*.example.org");
    let ta = tlsa(2, 1, 1, sha256(&ca_key.subject_public_key_info()));
    let chain = [ca];
    let now = UnixTime::now();
    assert!(
        verifier(vec![ta.clone()], &["mx.example.org"])
            .check(&leaf, &chain, now)
            .is_ok()
    );
    assert!(
        verifier(vec![ta], &["a.mx.example.org"])
            .check(&leaf, &chain, now)
            .is_err()
    );
}

#[test]
fn usability() {
    let d32 = vec![0u8; 32];
    assert!(tlsa(3, 1, 1, d32.clone()).is_usable());
    assert!(tlsa(2, 0, 1, d32.clone()).is_usable());
    // Row 18: PKIX usages; unknown selector/matching; wrong digest length.
    assert!(!tlsa(0, 1, 1, d32.clone()).is_usable());
    assert!(!tlsa(1, 1, 1, d32.clone()).is_usable());
    assert!(!tlsa(4, 1, 1, d32.clone()).is_usable());
    assert!(!tlsa(3, 2, 1, d32.clone()).is_usable());
    assert!(!tlsa(3, 1, 3, d32.clone()).is_usable());
    assert!(!tlsa(3, 1, 1, vec![0u8; 31]).is_usable());
    assert!(!tlsa(3, 1, 2, d32.clone()).is_usable());
    assert!(!tlsa(3, 1, 0, vec![]).is_usable());
}

#[test]
fn digest_agility_keeps_the_strongest() {
    let r256 = tlsa(3, 1, 1, vec![1; 32]);
    let r512 = tlsa(3, 1, 2, vec![2; 64]);
    let full = tlsa(3, 1, 0, vec![3; 10]);
    let ta256 = tlsa(2, 1, 1, vec![4; 32]);
    let kept = usable_records(&[
        r256.clone(),
        r512.clone(),
        full.clone(),
        ta256.clone(),
        tlsa(1, 1, 2, vec![5; 64]),
    ]);
    assert_eq!(kept, vec![r512, full, ta256.clone()]);
    assert_eq!(usable_records(std::slice::from_ref(&r256)), vec![r256]);
}

#[test]
fn tlsa_rrset_classification() {
    let ee = tlsa(3, 1, 1, vec![1; 32]);
    let pkix = tlsa(1, 1, 1, vec![1; 32]);
    // Row 11.
    assert_eq!(
        classify_tlsa(&[(ee.clone(), Proof::Secure)]),
        TlsaAnswer::Dane(vec![ee.clone()])
    );
    // Row 10.
    assert_eq!(
        classify_tlsa(&[(pkix.clone(), Proof::Secure)]),
        TlsaAnswer::Unusable
    );
    // Row 9: insecure (or unvalidated) records are not used.
    assert_eq!(
        classify_tlsa(&[(ee.clone(), Proof::Insecure)]),
        TlsaAnswer::NoDane
    );
    assert_eq!(
        classify_tlsa(&[(ee.clone(), Proof::Indeterminate)]),
        TlsaAnswer::NoDane
    );
    assert_eq!(
        classify_tlsa(&[(ee.clone(), Proof::Secure), (pkix, Proof::Insecure)]),
        TlsaAnswer::NoDane
    );
    // Row 8.
    assert!(matches!(
        classify_tlsa(&[(ee, Proof::Bogus)]),
        TlsaAnswer::Failed { bogus: true, .. }
    ));
}

#[test]
fn rrset_security_rules() {
    assert_eq!(rrset_security([Proof::Secure, Proof::Secure]), Some(true));
    assert_eq!(
        rrset_security([Proof::Secure, Proof::Insecure]),
        Some(false)
    );
    assert_eq!(rrset_security([Proof::Indeterminate]), Some(false));
    assert_eq!(rrset_security([]), Some(false));
    assert_eq!(rrset_security([Proof::Secure, Proof::Bogus]), None);
}

#[test]
fn dane_error_survives_the_rustls_and_io_wrapping() {
    let (cert, _) = self_signed("mx.example.org");
    let v = verifier(vec![tlsa(3, 1, 1, vec![0; 32])], &["mx.example.org"]);
    let name = ServerName::try_from("mx.example.org").unwrap();
    let err = v
        .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        .unwrap_err();
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
    assert_eq!(DaneError::from_io(&io), Some(DaneError::NoMatch));
    assert_eq!(DaneError::from_io(&std::io::Error::other("x")), None);
}
