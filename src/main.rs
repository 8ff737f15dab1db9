/// mimalloc: plans allocate millions of small strings; it is faster than glibc's malloc at that and keeps
/// less memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    purge_freed_memory_soon();
    one_arena_for_c_libraries();
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

/// libjpeg-turbo and libwebp allocate through glibc's malloc, which gives each thread that allocates one of up
/// to eight arenas per core and keeps what is freed in each (a progressive JPEG's coefficients, 28 MB for a
/// 3840×2400 photo, are allocated and freed once per image, by whichever of hundreds of download threads
/// decodes it). Measured on the img2dataset benchmark with a quarter of its JPEGs progressive: 666–717 MB of
/// RSS against a 128 MiB budget; with one arena, 330 MB and no more CPU (with two, 350–370 MB). A fixed mmap
/// threshold instead (every large block from the system) gave 275 MB for 11 % more CPU, in page faults. C
/// libraries allocate a few blocks per image, so one arena's lock is not contended. `MALLOC_ARENA_MAX` (or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) still decides where set.
fn one_arena_for_c_libraries() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"))
    {
        // SAFETY: mallopt is thread-safe and M_ARENA_MAX takes any positive count; called before any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}
