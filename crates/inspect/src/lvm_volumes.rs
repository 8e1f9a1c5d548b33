//! LVM2: the logical volumes of the volume groups whose physical volumes are
//! partitions of the image, probed and opened like partitions. They are listed after
//! the partitions, numbered on from the last one, and named "vg/lv". A PV whose VG
//! was read is examined (its content is its LVs); an LV that cannot be read (a
//! segment type amiforge does not read, a PV the image lacks) is listed with the
//! reason, and so is a PV whose label or metadata is damaged.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockio::BlockSource;
use imagefs::FsKind;
use partition::{Partition, PartitionType};

use crate::Volume;

/// A PV found on a volume: its index in the volume list, label and bytes.
struct Pv {
    volume: usize,
    label: lvm::PvLabel,
    device: Arc<dyn BlockSource>,
}

/// Appends the LVs of every VG found on `volumes`' PVs.
pub(crate) fn add(volumes: &mut Vec<Volume>) {
    let mut pvs = Vec::new();
    for (i, v) in volumes.iter_mut().enumerate() {
        let (Some(FsKind::Lvm2), Some(device)) = (v.kind, v.window.clone()) else {
            continue;
        };
        match lvm::label(&*device) {
            Ok(Some(label)) => pvs.push(Pv {
                volume: i,
                label,
                device,
            }),
            Ok(None) => v.problem = Some("LVM2 signature without a readable PV label".into()),
            Err(e) => v.problem = Some(format!("LVM2 physical volume: {}", e.detail())),
        }
    }
    // Each VG from the PV whose metadata has the highest seqno.
    let mut vgs: BTreeMap<String, (lvm::VolumeGroup, Vec<usize>)> = BTreeMap::new();
    for pv in &pvs {
        let vg = lvm::metadata(&*pv.device, &pv.label)
            .map_err(|e| e.detail())
            .and_then(|text| {
                text.ok_or_else(|| "a PV in no volume group (no metadata)".to_string())
            })
            .and_then(|text| lvm::volume_group(&text).map_err(|e| format!("its metadata: {e}")));
        match vg {
            Ok(vg) => {
                let entry = vgs
                    .entry(vg.name.clone())
                    .or_insert_with(|| (vg.clone(), Vec::new()));
                if vg.seqno > entry.0.seqno {
                    entry.0 = vg;
                }
                entry.1.push(pv.volume);
            }
            Err(why) => volumes[pv.volume].problem = Some(format!("LVM2 physical volume: {why}")),
        }
    }
    let mut number = volumes
        .iter()
        .map(|v| v.partition.number)
        .max()
        .unwrap_or(0);
    for (name, (vg, members)) in vgs {
        let found = |uuid: &str| -> Option<Arc<dyn BlockSource>> {
            pvs.iter()
                .find(|p| p.label.uuid == uuid)
                .map(|p| p.device.clone())
        };
        let mut listed = Vec::new();
        for lv in vg.lvs.iter().filter(|lv| lv.visible) {
            number += 1;
            let full = format!("{name}/{}", lv.name);
            let partition = Partition {
                number,
                start: 0,
                size: lv.extents().saturating_mul(vg.extent_size),
                kind: PartitionType::LogicalVolume,
                name: Some(full.clone()),
                guid: None,
                bootable: false,
                extended: false,
                logical: false,
            };
            let volume = match lvm::assemble(&vg, lv, &found) {
                Ok(source) => Volume::probe_source(Arc::new(source), partition),
                Err(why) => {
                    Volume::unread(partition, Some(format!("LVM logical volume {full}: {why}")))
                }
            };
            listed.push(format!("{full} (partition {number})"));
            volumes.push(volume);
        }
        for &m in &members {
            let v = &mut volumes[m];
            v.problem = None;
            v.notes.push(format!(
                "LVM2 physical volume of volume group {name}; its logical volumes: {}",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            ));
        }
    }
}
