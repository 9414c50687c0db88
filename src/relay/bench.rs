pub async fn run(_a: RelayBenchArgs) -> std::io::Result<()> {
    Ok(())
}
/// args
#[derive(Debug, Clone, clap::Args)]
pub struct RelayBenchArgs {}
