//! `crmessenger-connector`: the connector binary.

fn main() {
    eprintln!(
        "crmessenger-connector {} ({}): no subcommands yet; `run`, `sidecar`, `gateway` and `standalone` come with the connector core",
        env!("CARGO_PKG_VERSION"),
        crmessenger_connector::api_version()
    );
    std::process::exit(2);
}
