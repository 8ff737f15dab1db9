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
        /// "ViT-B/32", "open_clip:ARCH/TAG" (open_clip's pretrained tags, e.g.
        /// "open_clip:ViT-H-14-CLIPA-336/laion2b"), "open_clip:hf-hub:ORG/NAME", "hf_clip:ORG/NAME"; pinned to a
        /// Hub commit when the plan is made and fetched by the worker
        model: Option<String>,
        /// the branch, tag or commit of the model's Hub repo; the plan pins it to a commit
        model_revision: String = "main".into(),
        /// a local model folder, relative to the pipeline file, in Hugging Face's CLIP format (config.json,
        /// tokenizer.json, model.safetensors) or open_clip's (open_clip_config.json with its weights); instead of
        /// `model`
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
