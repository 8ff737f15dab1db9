//! How much of one object a read from the store may bring into memory. Anyone who can write to a shared
//! bucket can put a 50 GB object where a manifest belongs; a plan that read it whole would allocate it. Each
//! read names what it expects and its bound, and an object over it is refused before its bytes are read
//! (by its listed or announced size), or as soon as they pass the bound (an object that grew meanwhile).

use std::fmt;
use std::io::Read;

/// The most bytes of one kind of object a read accepts: each well above what dsmake ever writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub bytes: u64,
    /// What the object is, for the error ("a manifest").
    pub what: &'static str,
    /// What becomes of such an object, for the error.
    pub then: &'static str,
}

impl ReadLimit {
    /// A target's manifest: its outputs, key parts and stats, a few KB (the largest, a command step's with
    /// a long `run` and many outputs, well under 1 MiB).
    pub const MANIFEST: ReadLimit = ReadLimit {
        bytes: 16 << 20,
        what: "a manifest",
        then: "its target counts as missing, and a build replaces it",
    };
    /// A step's index: about 190 bytes a target, so a gibibyte is over 5 million targets. A larger one is
    /// left unread (the plan reads the manifests instead, as without an index).
    pub const INDEX: ReadLimit = ReadLimit {
        bytes: 1 << 30,
        what: "a step index",
        then: "plans read the manifests instead, and a build replaces it",
    };
    /// Small JSON notes: a manifests' folder's listing note, a multipart upload's note.
    pub const NOTE: ReadLimit = ReadLimit { bytes: 64 << 10, what: "a note", then: "it is left unread" };
    /// A remote run's per-task results (a line per target).
    pub const RESULTS: ReadLimit =
        ReadLimit { bytes: 256 << 20, what: "a run's results", then: "the run's own errors are not shown" };

    /// An object a manifest records as `bytes` long, fetched to a local file.
    pub fn recorded(bytes: u64) -> ReadLimit {
        ReadLimit {
            bytes,
            what: "the object its manifest records",
            then: "it was replaced after its manifest was written",
        }
    }
}

/// An object larger than the [`ReadLimit`] of what it should be; no more of it was read than the bound.
#[derive(Debug)]
pub struct TooLarge {
    /// Where the object is, as the user would find it (a path, an `s3://` URL).
    pub at: String,
    /// Its size where the store said (a listing, a `Content-Length`); otherwise it grew past the bound while read.
    pub size: Option<u64>,
    pub limit: ReadLimit,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = match self.size {
            Some(size) => format!("{size} bytes"),
            None => format!("over {} bytes", self.limit.bytes),
        };
        write!(
            f,
            "{} is {size}, more than {} may be ({} bytes at most): dsmake did not write it as it is now; {}",
            self.at, self.limit.what, self.limit.bytes, self.limit.then
        )
    }
}

impl std::error::Error for TooLarge {}

/// Reads `reader` to its end, at most `limit.bytes`: `Err(None)` when there is more, an I/O error otherwise.
/// `hint` is the size the object is expected to have, to allocate once.
pub fn read_at_most(reader: impl Read, limit: ReadLimit, hint: u64) -> Result<Vec<u8>, Option<std::io::Error>> {
    let mut bytes = Vec::with_capacity(hint.min(limit.bytes) as usize);
    reader.take(limit.bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(Some)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(None);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_bound_and_refuses_a_byte_more() {
        let limit = ReadLimit { bytes: 4, what: "a test object", then: "nothing is lost" };
        assert_eq!(read_at_most(&b"abcd"[..], limit, 100).unwrap(), b"abcd");
        assert!(matches!(read_at_most(&b"abcde"[..], limit, 0), Err(None)));
        let error = TooLarge { at: "s/_meta/x.json".into(), size: Some(5), limit };
        assert_eq!(
            error.to_string(),
            "s/_meta/x.json is 5 bytes, more than a test object may be (4 bytes at most): dsmake did not write it \
             as it is now; nothing is lost"
        );
        let grown = TooLarge { at: "x".into(), size: None, limit };
        assert!(grown.to_string().starts_with("x is over 4 bytes, more than a test object may be"));
    }
}
