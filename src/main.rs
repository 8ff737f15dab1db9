/// mimalloc: plans allocate millions of small strings; it is faster than glibc's malloc at that and keeps
/// less memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    purge_freed_memory_soon();
    std::process::exit(dsmake::cli::main());
}

/// mimalloc v3 gives freed memory back to the system a second after it is freed (ten for its arenas); a build
/// that moves hundreds of megabytes of image bodies a second (each freed by one of hundreds of download threads)
/// would hold seconds' worth of them on top of its memory budget: measured, 1.1 GB of RSS against 740 MB with
/// prompt purging, for a 256 MiB budget. So freed memory is purged at once, unless `MIMALLOC_PURGE_DELAY` or
/// `MIMALLOC_ARENA_PURGE_MULT` say otherwise.
fn purge_freed_memory_soon() {
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` and `mi_option_arena_purge_mult` in the v3 mimalloc.h that libmimalloc-sys vendors.
    const PURGE_DELAY: std::ffi::c_int = 15;
    const ARENA_PURGE_MULT: std::ffi::c_int = 24;
    for (option, name) in [(PURGE_DELAY, "MIMALLOC_PURGE_DELAY"), (ARENA_PURGE_MULT, "MIMALLOC_ARENA_PURGE_MULT")] {
        if std::env::var_os(name).is_none() {
            // SAFETY: mimalloc is linked in (the global allocator); setting an option is thread-safe, and 0 (no
            // delay) and 1 (the same delay for arenas) are valid values.
            unsafe { mi_option_set(option, if option == PURGE_DELAY { 0 } else { 1 }) };
        }
    }
}
