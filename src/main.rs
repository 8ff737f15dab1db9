/// mimalloc: plans allocate millions of small strings; it is faster than glibc's malloc at that and keeps
/// less memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(dsmake::cli::main());
}
