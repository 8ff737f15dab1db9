//! img2dataset's settings: its options, names and defaults, so that its users change nothing.

use super::options::{Encode, ResizeMode};

crate::setting_enum! {
    /// Whether the downloaded bytes are hashed into the `sha256` column.
    pub enum ComputeHash {
        Sha256 = "sha256",
        None = "none",
    }
}

crate::settings! {
    pub struct Settings {
        /// the column of image URLs
        url_col: String = "url".into(),
        /// the column of captions, written as KEY.txt
        caption_col: Option<String>,
        /// input columns copied to KEY.json and the shard's parquet
        save_additional_columns: Vec<String> = Vec::new(),
        /// rows per shard; shard i of a file always covers rows [i·n, (i+1)·n)
        number_sample_per_shard: i64 = 10000,
        /// the target size in pixels
        image_size: i64 = 256,
        /// "no", "keep_ratio" (smaller side = image_size), "keep_ratio_largest" (larger side), "center_crop",
        /// "border" (larger side, padded white to a square)
        resize_mode: ResizeMode = ResizeMode::Border,
        /// never upscale
        resize_only_if_bigger: bool = false,
        /// keep the downloaded bytes when no resize is needed and the format is already encode_format
        skip_reencode: bool = false,
        /// "jpg", "png" or "webp" (lossless)
        encode_format: Encode = Encode::Jpg,
        /// JPEG quality 0–100; for png the compression level 0–9
        encode_quality: i64 = 95,
        /// smaller side below this fails the row
        min_image_size: i64 = 0,
        /// width × height above this fails the row
        max_image_area: Option<f64>,
        /// larger side / smaller side above this fails the row
        max_aspect_ratio: Option<f64>,
        /// seconds per download
        timeout: f64 = 10.0,
        /// extra attempts after a timeout, a broken connection, 429 or 5xx (Retry-After is honoured)
        retries: i64 = 0,
        /// a token added to the User-Agent, and matched against agent-specific X-Robots-Tag directives
        user_agent_token: Option<String>,
        /// X-Robots-Tag directives that forbid using the image
        disallowed_header_directives: Vec<String> =
            ["noai", "noimageai", "noindex", "noimageindex"].map(String::from).to_vec(),
        /// an `exif` column: the image's EXIF tags as JSON text (exifread's names)
        extract_exif: bool = true,
        /// "sha256" of the downloaded bytes, or "none"
        compute_hash: ComputeHash = ComputeHash::Sha256,
        /// [COLUMN, "sha256"]: rows whose download does not hash to COLUMN fail with "hash mismatch"
        verify_hash: Option<Vec<String>>,
        /// downloads in flight per shard (img2dataset's processes × threads)
        concurrency: i64 = 64,
        /// downloads in flight per host
        per_host_connections: i64 = 16,
        /// hosts allowed even though they are loopback, private or link-local ("*" for all);
        /// DSMAKE_ALLOW_HOSTS (comma-separated) adds to it
        allow_hosts: Vec<String> = Vec::new(),
        /// redirects followed per image
        max_redirects: i64 = 10,
        /// accept image hosts' TLS certificates without verifying them (img2dataset's `ignore_ssl_certificate`,
        /// #108: many hosts serve broken chains); an explicit opt-in, said in the plan and the worker's log
        ignore_ssl_certificate: bool = false,
        /// bytes downloaded per image at most
        max_image_bytes: i64 = 33554432,
        /// decoded pixels per image at most, checked from the header before decoding (Pillow's limit)
        max_pixels: i64 = 89478485,
    }
}

impl Settings {
    pub fn hashing(&self) -> bool {
        self.compute_hash == ComputeHash::Sha256
    }
}
