//! Where a model runs: the GPU when the machine has one, or an error that says why not (clip-retrieval #390: a
//! build without CUDA quietly ran on the CPU of a GPU machine for days). `device = "auto"` on a machine with an
//! NVIDIA GPU needs a dsmake built with CUDA (`scripts/build-cuda-worker.sh`); `device = "cpu"` runs on the CPU on
//! purpose.

use std::path::Path;

/// Whether the machine under `root` (`/` but in tests) has an NVIDIA GPU: the driver's `/proc/driver/nvidia/gpus`
/// lists one, or `/dev/nvidia0` exists. Containers that pass a GPU through show one of the two.
pub fn nvidia_gpu_present(root: &Path) -> bool {
    let gpus = root.join("proc/driver/nvidia/gpus");
    let listed = std::fs::read_dir(&gpus).is_ok_and(|mut entries| entries.next().is_some());
    listed || root.join("dev/nvidia0").exists()
}

/// Whether this binary was built with CUDA (`--features cuda`).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// What a `device` setting comes to on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Cpu,
    Cuda,
    /// Cannot run as asked: the message says why and what to do.
    Refused(String),
}

const REBUILD: &str = "run the CUDA build of dsmake (scripts/build-cuda-worker.sh; on Databricks, `gpu_binary` in the \
                       remote file ships it to GPU steps)";

/// The device for `setting` ("auto", "cpu", "cuda") given whether the machine has an NVIDIA GPU and whether this
/// binary has CUDA.
pub fn choose(setting: &str, gpu_present: bool, cuda_built: bool) -> Choice {
    match (setting, gpu_present, cuda_built) {
        ("cpu", _, _) => Choice::Cpu,
        ("cuda", _, true) | ("auto", true, true) => Choice::Cuda,
        ("cuda", _, false) => Choice::Refused(format!(
            "device = \"cuda\" but this dsmake was built without CUDA: {REBUILD}, or set device = \"cpu\""
        )),
        ("auto", true, false) => Choice::Refused(format!(
            "this machine has an NVIDIA GPU but this dsmake was built without CUDA, so device = \"auto\" would run \
             CLIP on the CPU: {REBUILD}, or set device = \"cpu\" to run on the CPU on purpose"
        )),
        ("auto", false, _) => Choice::Cpu,
        (other, _, _) => Choice::Refused(format!("unknown device `{other}` (expected \"auto\", \"cpu\" or \"cuda\")")),
    }
}

/// [`choose`] on this machine.
pub fn choose_here(setting: &str) -> Choice {
    choose(setting, nvidia_gpu_present(Path::new("/")), CUDA_BUILT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_sees_a_gpu_in_proc_or_dev() {
        let root = tempfile::tempdir().unwrap();
        assert!(!nvidia_gpu_present(root.path()));
        std::fs::create_dir_all(root.path().join("proc/driver/nvidia/gpus")).unwrap();
        assert!(!nvidia_gpu_present(root.path()), "a driver without a GPU listed");
        std::fs::create_dir_all(root.path().join("proc/driver/nvidia/gpus/0000:00:1e.0")).unwrap();
        assert!(nvidia_gpu_present(root.path()));
        let dev = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dev.path().join("dev")).unwrap();
        std::fs::write(dev.path().join("dev/nvidia0"), "").unwrap();
        assert!(nvidia_gpu_present(dev.path()));
    }

    #[test]
    fn auto_uses_the_gpu_or_says_why_it_cannot() {
        assert_eq!(choose("auto", false, false), Choice::Cpu);
        assert_eq!(choose("auto", false, true), Choice::Cpu);
        assert_eq!(choose("auto", true, true), Choice::Cuda);
        assert_eq!(choose("cpu", true, false), Choice::Cpu);
        assert_eq!(choose("cuda", false, true), Choice::Cuda);
        let Choice::Refused(why) = choose("auto", true, false) else { panic!("a GPU machine without CUDA ran") };
        assert!(why.contains("NVIDIA GPU") && why.contains("build-cuda-worker.sh") && why.contains("\"cpu\""), "{why}");
        let Choice::Refused(why) = choose("cuda", false, false) else { panic!("cuda without CUDA ran") };
        assert!(why.contains("built without CUDA"), "{why}");
        assert!(matches!(choose("tpu", false, false), Choice::Refused(_)));
    }
}
