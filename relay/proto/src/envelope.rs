//! What the relay sees of a message: a send id, a token and ciphertext whose
//! length is one of a few fixed buckets.
//!
//! Fixed sizes keep the relay (and anyone watching it) from telling a "yes"
//! from a photo. Padding happens inside the client's encryption, so the relay
//! only checks the length.

use crate::error::ResultCode;

/// The ciphertext sizes a relay accepts, smallest first. The 1 KiB bucket is
/// for compact inner formats; a v1 sealed message (X-Wing + HPKE, about
/// 1.3 KiB of overhead) starts at the 2 KiB bucket.
pub const BUCKETS: [usize; 5] = [1024, 2048, 4096, 16 * 1024, 64 * 1024];

/// The largest bucket, which bounds every frame.
pub const MAX_CIPHERTEXT: usize = 64 * 1024;

/// Checks a ciphertext length against the buckets, naming the refusal.
pub fn check_len(len: usize) -> Result<(), ResultCode> {
    if len > MAX_CIPHERTEXT {
        Err(ResultCode::TooLarge)
    } else if BUCKETS.contains(&len) {
        Ok(())
    } else {
        Err(ResultCode::BadSize)
    }
}

/// The smallest bucket that holds `len` bytes, if any.
pub fn bucket_for(len: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|&b| b >= len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(check_len(1024), Ok(()));
        assert_eq!(check_len(1000), Err(ResultCode::BadSize));
        assert_eq!(check_len(0), Err(ResultCode::BadSize));
        assert_eq!(check_len(MAX_CIPHERTEXT + 1), Err(ResultCode::TooLarge));
        assert_eq!(bucket_for(1500), Some(2048));
        assert_eq!(bucket_for(MAX_CIPHERTEXT + 1), None);
    }
}
