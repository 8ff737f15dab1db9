//! clip-embed's settings: the model, where it runs, and how input shards group into parts.

crate::setting_enum! {
    /// Where the model runs.
    pub enum Device {
        Auto = "auto",
        Cpu = "cpu",
        Cuda = "cuda",
    }
}

crate::settings! {
    pub struct Settings {
        /// all-clip model name: "ViT-L/14@336px" (when neither this nor `model_path` is set), "ViT-L/14",
        /// "ViT-B/32", "open_clip:ViT-L-14-336/openai", "hf_clip:ORG/NAME", …; weights from the Hugging Face cache
        model: Option<String>,
        /// a local CLIP folder, relative to the pipeline file, instead of `model`: in Hugging Face format
        /// (config.json, tokenizer.json, model.safetensors) or open_clip's (open_clip_config.json,
        /// open_clip_model.safetensors or open_clip_pytorch_model.bin, and the tokenizer's tokenizer.json)
        model_path: Option<String>,
        /// "auto", "cpu" or "cuda" (fp16; needs the `cuda` build)
        device: Device = Device::Auto,
        /// images per model call
        batch_size: i64 = 64,
        /// input shards per output part (default 1); new shards add parts and never change complete ones
        shards_per_part: Option<i64>,
        /// images per part, as clip-retrieval says it: a multiple of the images per input shard
        /// (`samples_per_shard`, or what the input step fixes, such as img2dataset's `number_sample_per_shard`);
        /// instead of `shards_per_part`
        write_batch_size: Option<i64>,
        /// images per input shard, to turn `write_batch_size` into shards
        samples_per_shard: Option<i64>,
    }
}
