/// mimalloc: plans allocate millions of small strings; it is faster than glibc's malloc at that and keeps
/// less memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    purge_freed_memory_soon();
    std::process::exit(dsmake::cli::main());
}

/// mimalloc v3 gives freed memory back to the system a second after it is freed; a build that moves hundreds of
/// megabytes of image bodies a second (each freed by one of hundreds of download threads) would hold a
/// second's worth of them on top of its memory budget. 10 ms, mimalloc v2's delay, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise.
fn purge_freed_memory_soon() {
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in the mimalloc.h that libmimalloc-sys vendors (v2 and v3 alike).
    const PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc is linked in (the global allocator); setting an option is thread-safe and any
        // value is valid for this one.
        unsafe { mi_option_set(PURGE_DELAY, 10) };
    }
}
