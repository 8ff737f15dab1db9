//! `dsmake kinds`: what each step kind does and the settings it takes.

use crate::kind::settings::Fallback;

pub fn kinds() -> anyhow::Result<()> {
    for kind in crate::kinds::ALL {
        println!("{} (v{}): {}", kind.name(), kind.version(), kind.about());
        for setting in kind.schema() {
            let default = match &setting.fallback {
                Fallback::Required => "required".to_string(),
                Fallback::Absent => "optional".to_string(),
                Fallback::Value(v) => format!("default {v}"),
            };
            println!("  {:<12} {} ({default}): {}", setting.name, setting.ty.describe(), setting.help);
        }
        println!();
    }
    Ok(())
}
