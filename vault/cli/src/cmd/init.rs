//! `idvault init`: a data directory (root key, config; with --dev a dev PKI).

use anyhow::Context;
use idvault_core::SystemRng;

use super::DataDir;

pub(crate) fn run(dir: &DataDir, dev: bool, listen: &str) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    let made = if dev {
        idvault_server::devinit::init_dev(&dir.data_dir, listen, &rng)?
    } else {
        std::fs::create_dir_all(&dir.data_dir)
            .with_context(|| dir.data_dir.display().to_string())?;
        let mut made = Vec::new();
        let root = dir.data_dir.join("root.key");
        if !root.exists() {
            idvault_server::keyfile::create(&root, &rng)?;
            made.push(root);
        }
        let cfg = dir.config_path();
        if !cfg.exists() {
            let text = idvault_server::devinit::production_config(listen);
            std::fs::write(&cfg, text)?;
            made.push(cfg);
        }
        made
    };
    if made.is_empty() {
        println!(
            "{}: nothing to do, everything exists",
            dir.data_dir.display()
        );
    }
    for p in made {
        println!("wrote {}", p.display());
    }
    Ok(())
}
