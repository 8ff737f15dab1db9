fn main() {
    std::process::exit(dsmake::cli::main());
}
