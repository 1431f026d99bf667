//! TLSA records (`delivery/dane/`): RDATA in DNS wire form, as an answer brings them, read as
//! the lookup reads them, each with a DNSSEC proof; then DANE's rules over them and a
//! certificate (arbitrary DER, or a real one the corpus starts from) matched and verified.
//!
//! What must hold:
//! - the usable records are exactly the records usable by RFC 7672 3.1.3 that no stronger
//!   digest of the same usage and selector outranks (RFC 7671 9); full-data records always;
//! - the classification follows the decision table: any bogus proof is bogus, anything but
//!   all secure (or nothing) is no DANE, secure without usable records is unusable;
//! - a DANE-EE record made from the certificate itself matches it (full, SHA2-256, SHA2-512,
//!   and by SPKI where the certificate has one), one with a changed byte does not, and the
//!   verifier accepts the certificate by that record and refuses it without;
//! - nothing the peer sends (chains of arbitrary DER) makes the verifier panic.

use aws_lc_rs::digest;
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::serialize::binary::{BinDecoder, Restrict};
use rustls::pki_types::{CertificateDer, UnixTime};

use super::Input;
use crate::delivery::dane::{
    DANE_EE, DaneError, DaneVerifier, Tlsa, TlsaAnswer, classify_tlsa, spki, usable_records,
};

pub(super) fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let count = input.byte() % 6;
    let mut records = Vec::new();
    for _ in 0..count {
        let proof = match input.byte() % 8 {
            0 => Proof::Bogus,
            1 => Proof::Insecure,
            2 => Proof::Indeterminate,
            _ => Proof::Secure,
        };
        let rdata = input.field(300);
        let mut decoder = BinDecoder::new(rdata);
        let Ok(RData::TLSA(t)) = RData::read(
            &mut decoder,
            RecordType::TLSA,
            Restrict::new(rdata.len() as u16),
        ) else {
            continue;
        };
        // As `lookup_tlsa` takes them.
        let tlsa = Tlsa {
            usage: u8::from(t.cert_usage),
            selector: u8::from(t.selector),
            matching: u8::from(t.matching),
            data: t.cert_data.clone(),
        };
        records.push((tlsa, proof));
    }
    check_rules(&records);

    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::from(input.u32())));
    let end_entity = CertificateDer::from(input.field(4096).to_vec());
    let intermediates: Vec<CertificateDer<'static>> = (0..input.byte() % 3)
        .map(|_| CertificateDer::from(input.field(4096).to_vec()))
        .collect();
    check_matching(&records, &end_entity, &intermediates, now);
}

fn check_rules(records: &[(Tlsa, Proof)]) {
    let all: Vec<Tlsa> = records.iter().map(|(t, _)| t.clone()).collect();
    let usable = usable_records(&all);
    for r in &usable {
        assert!(r.is_usable(), "{r} is not usable");
        assert!(all.contains(r));
    }
    for r in all.iter().filter(|r| r.is_usable()) {
        let outranked = r.matching != 0
            && all.iter().any(|o| {
                o.is_usable()
                    && o.usage == r.usage
                    && o.selector == r.selector
                    && o.matching > r.matching
            });
        assert_eq!(
            usable.contains(r),
            !outranked,
            "{r}: outranked {outranked}, in {all:?}"
        );
    }

    let answer = classify_tlsa(records);
    let any_bogus = records.iter().any(|(_, p)| *p == Proof::Bogus);
    let secure = !records.is_empty() && records.iter().all(|(_, p)| *p == Proof::Secure);
    match answer {
        TlsaAnswer::Failed { bogus, .. } => assert!(bogus && any_bogus),
        TlsaAnswer::NoDane => assert!(!any_bogus && !secure),
        TlsaAnswer::Unusable => assert!(secure && usable.is_empty()),
        TlsaAnswer::Dane(ref chosen) => {
            assert!(secure);
            assert_eq!(chosen, &usable);
        }
    }
}

fn check_matching(
    records: &[(Tlsa, Proof)],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let names = vec!["mx.example.net".to_string(), "example.net".to_string()];
    // The records from the input, whatever they are: no panic.
    let from_input: Vec<Tlsa> = records.iter().map(|(t, _)| t.clone()).collect();
    for r in &from_input {
        let _ = r.matches(end_entity);
    }
    let verifier = DaneVerifier::new(from_input, names.clone(), provider.clone());
    let _ = verifier.check(end_entity, intermediates, now);

    // Records made from the certificate itself.
    let der = end_entity.as_ref();
    let mut own = vec![
        ee(0, 0, der.to_vec()),
        ee(0, 1, digest::digest(&digest::SHA256, der).as_ref().to_vec()),
        ee(0, 2, digest::digest(&digest::SHA512, der).as_ref().to_vec()),
    ];
    if let Some(key) = spki(end_entity) {
        own.push(ee(
            1,
            1,
            digest::digest(&digest::SHA256, &key).as_ref().to_vec(),
        ));
        own.push(ee(1, 0, key));
    }
    for record in own {
        if record.data.is_empty() {
            continue;
        }
        assert!(
            record.matches(end_entity),
            "{record} does not match its own certificate"
        );
        let mut changed = record.clone();
        changed.data[0] ^= 1;
        assert!(!changed.matches(end_entity), "{changed} matches");
        let accepts = DaneVerifier::new(vec![record.clone()], names.clone(), provider.clone());
        assert_eq!(accepts.check(end_entity, intermediates, now), Ok(()));
        let refuses = DaneVerifier::new(vec![changed], names.clone(), provider.clone());
        assert_eq!(
            refuses.check(end_entity, intermediates, now),
            Err(DaneError::NoMatch)
        );
    }
}

fn ee(selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage: DANE_EE,
        selector,
        matching,
        data,
    }
}
