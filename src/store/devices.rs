//! Device passwords as every backend handles them: a new password with its credential id, and
//! the AUTH comparison over the stored hashes of one address. Backends only fetch the rows and
//! store the hash ([`crate::policy::password`] makes and hashes passwords).

use super::{CredentialId, StoreError, quoted};
use crate::policy::{DevicePassword, password};

/// One device row as AUTH reads it: name, credential id and the stored SHA-256 of its password.
pub(super) struct StoredDevice {
    /// The device's name.
    pub(super) name: String,
    /// Its current credential id.
    pub(super) credential: CredentialId,
    /// The stored hash, as the backend returned it (32 bytes when intact).
    pub(super) hash: Vec<u8>,
}

/// A fresh password and credential id for a new or rotated device.
///
/// # Errors
/// [`StoreError::Backend`] if the OS random generator fails.
pub(super) fn new_credential() -> Result<(DevicePassword, CredentialId), StoreError> {
    let password = password::try_generate()
        .map_err(|e| StoreError::Backend(format!("OS random generator: {e}")))?;
    Ok((password, CredentialId::random()?))
}

/// The device whose hash `password` matches, comparing against every device without stopping
/// at the first match, and doing the same work for an address without devices, so that timing
/// tells neither which device matched nor which addresses exist.
///
/// # Errors
/// [`StoreError::Backend`] for a stored hash that is not 32 bytes.
pub(super) fn matching_device(
    password: &str,
    devices: Vec<StoredDevice>,
) -> Result<Option<StoredDevice>, StoreError> {
    if devices.is_empty() {
        let _ = password::verify(password, &[0u8; 32]);
        return Ok(None);
    }
    let mut matched = None;
    for (i, device) in devices.iter().enumerate() {
        let stored: [u8; 32] = device.hash.as_slice().try_into().map_err(|_| {
            StoreError::Backend("a stored password hash is not 32 bytes".to_string())
        })?;
        if password::verify(password, &stored) && matched.is_none() {
            matched = Some(i);
        }
    }
    Ok(matched.and_then(|i| devices.into_iter().nth(i)))
}

/// `AlreadyExists` for a device name an address has already.
pub(super) fn device_exists(address: &str, name: &str) -> StoreError {
    StoreError::AlreadyExists {
        what: format!("device {} of address {}", quoted(name), quoted(address)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, secret: &str) -> StoredDevice {
        StoredDevice {
            name: name.to_string(),
            credential: CredentialId(name.to_string()),
            hash: password::hash(secret).to_vec(),
        }
    }

    #[test]
    fn the_matching_device_is_found_among_all() {
        let devices = vec![device("laptop", "one"), device("phone", "two")];
        let found = matching_device("two", devices).unwrap().unwrap();
        assert_eq!(found.name, "phone");
        assert!(
            matching_device("three", vec![device("a", "one")])
                .unwrap()
                .is_none()
        );
        assert!(matching_device("one", Vec::new()).unwrap().is_none());
        let broken = StoredDevice {
            hash: vec![1, 2, 3],
            ..device("x", "one")
        };
        assert!(matches!(
            matching_device("one", vec![broken]),
            Err(StoreError::Backend(_))
        ));
    }
}
