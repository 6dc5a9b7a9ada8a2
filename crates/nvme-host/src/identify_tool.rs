//! `sluice identify`: controller and namespace data in spdk_nvme_identify's layout.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::cmd::{feat, log};
use crate::controller::{Controller, ControllerOptions};
use crate::error::Error;
use crate::identify::{IdentifyController, IdentifyNamespace};
use crate::regs::{self, Cap};
use crate::trid::TransportId;

/// Command line of `sluice identify` (spdk_nvme_identify spelling).
#[derive(Clone, Debug, clap::Args)]
pub struct IdentifyArgs {
    /// Transport id, e.g. 'trtype:VFIOUSER traddr:/var/run/vfio-user subnqn:nqn...'.
    #[arg(short = 'r', long = "transport-id")]
    pub trid: String,
}

/// Everything `identify` prints, gathered from a controller.
#[derive(Clone, Debug, Default)]
pub struct IdentifyReport {
    /// Transport label, e.g. `VFIOUSER (/var/run/x)`.
    pub label: String,
    /// CAP register.
    pub cap: Cap,
    /// VS register.
    pub vs: u32,
    /// Identify Controller.
    pub ctrl: IdentifyController,
    /// Commands Supported and Effects log (4096 bytes) if available.
    pub effects: Option<Vec<u8>>,
    /// SMART / Health log (512 bytes) if available.
    pub health: Option<Vec<u8>>,
    /// Firmware slot log (512 bytes) if available.
    pub fw_slot: Option<Vec<u8>>,
    /// Get Features Arbitration DW0.
    pub arbitration: Option<u32>,
    /// Get Features Power Management DW0.
    pub power_state: Option<u32>,
    /// Get Features Number of Queues DW0.
    pub num_queues: Option<u32>,
    /// Active namespaces.
    pub namespaces: Vec<(u32, IdentifyNamespace)>,
}

impl IdentifyReport {
    /// Gathers the report from a live controller.
    pub fn gather(c: &mut Controller, label: String) -> Result<Self, Error> {
        let ctrl = c.identify_controller()?;
        let vs = c.read_reg32(regs::VS)?;
        let effects = if ctrl.lpa & 2 != 0 {
            c.get_log_page(log::COMMAND_EFFECTS, 0, 4096).ok()
        } else {
            None
        };
        let health = c.get_log_page(log::HEALTH, 0xffff_ffff, 512).ok();
        let fw_slot = c.get_log_page(log::FIRMWARE_SLOT, 0, 512).ok();
        let arbitration = c.get_features(feat::ARBITRATION, 0).ok();
        let power_state = c.get_features(feat::POWER_MANAGEMENT, 0).ok();
        let num_queues = c.get_features(feat::NUMBER_OF_QUEUES, 0).ok();
        let mut namespaces = Vec::new();
        let ids = match c.active_namespaces() {
            Ok(ids) => ids,
            Err(_) => (1..=ctrl.nn.min(1024)).collect(),
        };
        for id in ids {
            let ns = c.identify_namespace(id)?;
            if ns.is_active() {
                namespaces.push((id, ns));
            }
        }
        Ok(Self {
            label,
            cap: c.cap(),
            vs,
            ctrl,
            effects,
            health,
            fw_slot,
            arbitration,
            power_state,
            num_queues,
            namespaces,
        })
    }

    /// Renders in spdk_nvme_identify's layout.
    pub fn render(&self) -> String {
        let mut o = String::new();
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut o);
        o
    }

    fn render_into(&self, o: &mut String) -> std::fmt::Result {
        let c = &self.ctrl;
        let cap = &self.cap;
        let sup = |b: bool| if b { "Supported" } else { "Not Supported" };
        let yn = |b: bool| if b { "Yes" } else { "No" };
        let bar = "=====================================================";
        writeln!(o, "{bar}")?;
        writeln!(o, "NVMeoF Controller at {}", self.label)?;
        writeln!(o, "{bar}")?;
        writeln!(o, "Controller Capabilities/Features")?;
        writeln!(o, "================================")?;
        writeln!(o, "{:<39}{:04x}", "Vendor ID:", c.vid)?;
        writeln!(o, "{:<39}{:04x}", "Subsystem Vendor ID:", c.ssvid)?;
        kv(o, "Serial Number:", &c.sn)?;
        kv(o, "Model Number:", &c.mn)?;
        kv(o, "Firmware Version:", &c.fr)?;
        kv(o, "Recommended Arb Burst:", c.rab)?;
        writeln!(
            o,
            "{:<39}{:02x} {:02x} {:02x}",
            "IEEE OUI Identifier:", c.ieee[0], c.ieee[1], c.ieee[2]
        )?;
        writeln!(o, "Multi-path I/O")?;
        kv2(o, "May have multiple subsystem ports:", yn(c.cmic & 1 != 0))?;
        kv2(o, "May have multiple controllers:", yn(c.cmic & 2 != 0))?;
        kv2(o, "Associated with SR-IOV VF:", yn(c.cmic & 4 != 0))?;
        match c.max_transfer(cap.mpsmin()) {
            Some(m) => writeln!(o, "{:<39}{}", "Max Data Transfer Size:", m)?,
            None => writeln!(o, "{:<39}Unlimited", "Max Data Transfer Size:")?,
        }
        kv(o, "Max Number of Namespaces:", c.nn)?;
        if let Some(q) = self.num_queues {
            let n = (q & 0xffff).min(q >> 16) + 1;
            kv(o, "Max Number of I/O Queues:", n)?;
        }
        kv(o, "NVMe Specification Version (VS):", fmt_ver(self.vs))?;
        kv(o, "NVMe Specification Version (Identify):", fmt_ver(c.ver))?;
        kv(o, "Maximum Queue Entries:", cap.mqes())?;
        kv(o, "Contiguous Queues Required:", yn(cap.cqr()))?;
        writeln!(o, "Arbitration Mechanisms Supported")?;
        kv2(o, "Weighted Round Robin:", sup(cap.ams() & 1 != 0))?;
        kv2(o, "Vendor Specific:", sup(cap.ams() & 2 != 0))?;
        writeln!(
            o,
            "{:<39}{} ms",
            "Reset Timeout:",
            u32::from(cap.to()) * 500
        )?;
        writeln!(o, "{:<39}{} bytes", "Doorbell Stride:", 4u32 << cap.dstrd())?;
        kv(o, "NVM Subsystem Reset:", sup(cap.nssrs()))?;
        writeln!(o, "Command Sets Supported")?;
        kv2(o, "NVM Command Set:", sup(cap.css() & 1 != 0))?;
        kv(o, "Boot Partition:", sup(cap.bps()))?;
        writeln!(
            o,
            "{:<39}{} bytes",
            "Memory Page Size Minimum:",
            cap.mpsmin()
        )?;
        writeln!(
            o,
            "{:<39}{} bytes",
            "Memory Page Size Maximum:",
            cap.mpsmax()
        )?;
        kv(o, "Persistent Memory Region:", sup(cap.pmrs()))?;
        writeln!(o, "Optional Asynchronous Events Supported")?;
        let aes = [
            (8, "Namespace Attribute Notices:"),
            (9, "Firmware Activation Notices:"),
            (11, "ANA Change Notices:"),
            (12, "PLE Aggregate Log Change Notices:"),
            (13, "LBA Status Info Alert Notices:"),
            (14, "EGE Aggregate Log Change Notices:"),
            (15, "Normal NVM Subsystem Shutdown event:"),
            (27, "Zone Descriptor Change Notices:"),
            (31, "Discovery Log Change Notices:"),
        ];
        for (bit, name) in aes {
            writeln!(o, "  {:<37}{}", name, sup(c.oaes & (1 << bit) != 0))?;
        }
        writeln!(o, "Controller Attributes")?;
        let attrs = [
            (0, "128-bit Host Identifier:"),
            (1, "Non-Operational Permissive Mode:"),
            (2, "NVM Sets:"),
            (3, "Read Recovery Levels:"),
            (4, "Endurance Groups:"),
            (5, "Predictable Latency Mode:"),
            (6, "Traffic Based Keep ALive:"),
            (7, "Namespace Granularity:"),
            (8, "SQ Associations:"),
            (9, "UUID List:"),
            (10, "Multi-Domain Subsystem:"),
            (11, "Fixed Capacity Management:"),
            (12, "Variable Capacity Management:"),
            (13, "Delete Endurance Group:"),
            (14, "Delete NVM Set:"),
            (15, "Extended LBA Formats Supported:"),
            (19, "Flexible Data Placement Supported:"),
        ];
        for (bit, name) in attrs {
            writeln!(o, "  {:<37}{}", name, sup(c.ctratt & (1 << bit) != 0))?;
        }
        writeln!(o)?;
        writeln!(o, "Controller Memory Buffer Support")?;
        writeln!(o, "================================")?;
        kv(o, "Supported:", yn(cap.cmbs()))?;
        writeln!(o)?;
        writeln!(o, "Persistent Memory Region Support")?;
        writeln!(o, "================================")?;
        kv(o, "Supported:", yn(cap.pmrs()))?;
        writeln!(o)?;
        writeln!(o, "Admin Command Set Attributes")?;
        writeln!(o, "============================")?;
        let oacs = [
            (0, "Security Send/Receive:"),
            (1, "Format NVM:"),
            (2, "Firmware Activate/Download:"),
            (3, "Namespace Management:"),
            (4, "Device Self-Test:"),
            (5, "Directives:"),
            (6, "NVMe-MI:"),
            (7, "Virtualization Management:"),
            (8, "Doorbell Buffer Config:"),
            (9, "Get LBA Status Capability:"),
            (10, "Command & Feature Lockdown Capability:"),
        ];
        for (bit, name) in oacs {
            writeln!(o, "{:<39}{}", name, sup(c.oacs & (1 << bit) != 0))?;
        }
        kv(o, "Abort Command Limit:", u16::from(c.acl) + 1)?;
        kv(o, "Async Event Request Limit:", u16::from(c.aerl) + 1)?;
        let fw_update = c.oacs & 4 != 0;
        if fw_update {
            kv(o, "Number of Firmware Slots:", (c.frmw >> 1) & 7)?;
            kv(o, "Firmware Slot 1 Read-Only:", yn(c.frmw & 1 != 0))?;
        } else {
            writeln!(o, "{:<39}N/A", "Number of Firmware Slots:")?;
            writeln!(o, "{:<39}N/A", "Firmware Slot 1 Read-Only:")?;
            writeln!(o, "{:<39}N/A", "Firmware Activation Without Reset:")?;
            writeln!(o, "{:<39}N/A", "Multiple Update Detection Support:")?;
        }
        writeln!(
            o,
            "{:<39}No Information Provided",
            "Firmware Update Granularity:"
        )?;
        kv(o, "Per-Namespace SMART Log:", yn(c.lpa & 1 != 0))?;
        kv(
            o,
            "Asymmetric Namespace Access Log Page:",
            sup(c.cmic & 8 != 0),
        )?;
        kv(o, "Subsystem NQN:", &c.subnqn)?;
        kv(o, "Command Effects Log Page:", sup(c.lpa & 2 != 0))?;
        kv(o, "Get Log Page Extended Data:", sup(c.lpa & 4 != 0))?;
        kv(o, "Telemetry Log Pages:", sup(c.lpa & 8 != 0))?;
        kv(o, "Persistent Event Log Pages:", sup(c.lpa & 16 != 0))?;
        kv(o, "Supported Log Pages Log Page:", sup(c.lpa & 32 != 0))?;
        kv(
            o,
            "Commands Supported & Effects Log Page:",
            sup(c.lpa & 2 != 0),
        )?;
        kv(
            o,
            "Error Log Page Entries Supported:",
            u16::from(c.elpe) + 1,
        )?;
        if c.kas == 0 {
            writeln!(o, "{:<39}Not Supported", "Keep Alive:")?;
        } else {
            writeln!(o, "{:<39}Supported", "Keep Alive:")?;
            writeln!(
                o,
                "{:<39}{} ms",
                "Keep Alive Granularity:",
                u32::from(c.kas) * 100
            )?;
        }
        writeln!(o)?;
        writeln!(o, "NVM Command Set Attributes")?;
        writeln!(o, "==========================")?;
        writeln!(o, "Submission Queue Entry Size")?;
        writeln!(o, "  {:<25}{}", "Max:", 1u32 << (c.sqes >> 4))?;
        writeln!(o, "  {:<25}{}", "Min:", 1u32 << (c.sqes & 0xf))?;
        writeln!(o, "Completion Queue Entry Size")?;
        writeln!(o, "  {:<25}{}", "Max:", 1u32 << (c.cqes >> 4))?;
        writeln!(o, "  {:<25}{}", "Min:", 1u32 << (c.cqes & 0xf))?;
        writeln!(o, "{:<29}{}", "Number of Namespaces:", c.nn)?;
        let oncs = [
            (0, "Compare Command:"),
            (1, "Write Uncorrectable Command:"),
            (2, "Dataset Management Command:"),
            (3, "Write Zeroes Command:"),
            (4, "Set Features Save Field:"),
            (5, "Reservations:"),
            (6, "Timestamp:"),
            (8, "Copy:"),
        ];
        for (bit, name) in oncs {
            writeln!(o, "{:<29}{}", name, sup(c.oncs & (1 << bit) != 0))?;
        }
        let vwc = if c.vwc & 1 != 0 {
            "Present"
        } else {
            "Not Present"
        };
        writeln!(o, "{:<29}{}", "Volatile Write Cache:", vwc)?;
        writeln!(
            o,
            "{:<29}{}",
            "Atomic Write Unit (Normal):",
            u32::from(c.awun) + 1
        )?;
        writeln!(
            o,
            "{:<29}{}",
            "Atomic Write Unit (PFail):",
            u32::from(c.awupf) + 1
        )?;
        writeln!(
            o,
            "{:<29}{}",
            "Atomic Compare & Write Unit:",
            u32::from(c.acwu) + 1
        )?;
        writeln!(
            o,
            "{:<29}{}",
            "Fused Compare & Write:",
            sup(c.fuses & 1 != 0)
        )?;
        writeln!(o, "Scatter-Gather List")?;
        let sgl = match c.sgls & 3 {
            1 => "Supported",
            2 => "Supported (Dword aligned)",
            _ => "Not Supported",
        };
        writeln!(o, "  {:<27}{}", "SGL Command Set:", sgl)?;
        let sgls = [
            (2, "SGL Keyed:"),
            (16, "SGL Bit Bucket Descriptor:"),
            (19, "SGL Metadata Pointer:"),
            (18, "Oversized SGL:"),
            (19, "SGL Metadata Address:"),
            (20, "SGL Offset:"),
            (21, "Transport SGL Data Block:"),
        ];
        for (bit, name) in sgls {
            writeln!(o, "  {:<27}{}", name, sup(c.sgls & (1 << bit) != 0))?;
        }
        writeln!(o, "{:<32}Not Supported", "Replay Protected Memory Block:")?;
        writeln!(o)?;
        self.render_tail(o)
    }

    fn render_tail(&self, o: &mut String) -> std::fmt::Result {
        let c = &self.ctrl;
        if let Some(fw) = &self.fw_slot {
            writeln!(o, "Firmware Slot Information")?;
            writeln!(o, "=========================")?;
            let afi = fw.first().copied().unwrap_or(0);
            writeln!(o, "{:<29}{}", "Active slot:", afi & 7)?;
            for slot in 1..=7usize {
                let rev = fw.get(8 * slot..8 * slot + 8).unwrap_or(&[]);
                let s = String::from_utf8_lossy(rev)
                    .trim_end_matches(['\0', ' '])
                    .to_string();
                if !s.is_empty() {
                    writeln!(o, "{:<29}{}", format!("Slot {slot} Firmware Revision:"), s)?;
                }
            }
            writeln!(o)?;
            writeln!(o)?;
        }
        if let Some(e) = &self.effects {
            writeln!(o, "Commands Supported and Effects")?;
            writeln!(o, "==============================")?;
            writeln!(o, "Admin Commands")?;
            writeln!(o, "--------------")?;
            for op in 0..256usize {
                let v = effect(e, op);
                if v & 1 != 0 {
                    writeln!(o, "{}", effect_line(admin_name(op), op, v))?;
                }
            }
            writeln!(o, "I/O Commands")?;
            writeln!(o, "------------")?;
            for op in 0..256usize {
                let v = effect(e, 256 + op);
                if v & 1 != 0 {
                    writeln!(o, "{}", effect_line(io_name(op), op, v))?;
                }
            }
            writeln!(o)?;
        }
        writeln!(o, "Error Log")?;
        writeln!(o, "=========")?;
        writeln!(o)?;
        if let Some(a) = self.arbitration {
            writeln!(o, "Arbitration")?;
            writeln!(o, "===========")?;
            let ab = a & 7;
            if ab == 7 {
                writeln!(o, "{:<29}no limit", "Arbitration Burst:")?;
            } else {
                writeln!(o, "{:<29}{}", "Arbitration Burst:", 1u32 << ab)?;
            }
            writeln!(o)?;
        }
        writeln!(o, "Power Management")?;
        writeln!(o, "================")?;
        writeln!(
            o,
            "{:<33}{}",
            "Number of Power States:",
            u16::from(c.npss) + 1
        )?;
        if let Some(ps) = self.power_state {
            writeln!(
                o,
                "{:<33}Power State #{}",
                "Current Power State:",
                ps & 0x1f
            )?;
        }
        for (i, p) in c.power_states.iter().enumerate() {
            writeln!(o, "Power State #{i}:")?;
            let scale = if p.mxps { 10_000.0 } else { 100.0 };
            writeln!(o, "  {:<32}{:.2} W", "Max Power:", f64::from(p.mp) / scale)?;
            let nops = if p.nops {
                "Non-Operational"
            } else {
                "Operational"
            };
            writeln!(o, "  {:<31}{}", "Non-Operational State:", nops)?;
            writeln!(o, "  {:<31}{}", "Entry Latency:", lat(p.enlat))?;
            writeln!(o, "  {:<31}{}", "Exit Latency:", lat(p.exlat))?;
            writeln!(o, "  {:<31}{}", "Relative Read Throughput:", p.rrt)?;
            writeln!(o, "  {:<31}{}", "Relative Read Latency:", p.rrl)?;
            writeln!(o, "  {:<31}{}", "Relative Write Throughput:", p.rwt)?;
            writeln!(o, "  {:<31}{}", "Relative Write Latency:", p.rwl)?;
            writeln!(o, "  {:<32}{}", "Idle Power:", power(p.idlp))?;
            writeln!(o, "  {:<32}{}", "Active Power:", power(p.actp))?;
        }
        writeln!(
            o,
            "{:<33}{}",
            "Non-Operational Permissive Mode:",
            if c.ctratt & 2 != 0 {
                "Supported"
            } else {
                "Not Supported"
            }
        )?;
        writeln!(o)?;
        if let Some(h) = &self.health {
            render_health(o, h)?;
        }
        if let Some(q) = self.num_queues {
            writeln!(o, "Number of Queues")?;
            writeln!(o, "================")?;
            writeln!(
                o,
                "{:<38}{}",
                "Number of I/O Submission Queues:",
                (q & 0xffff) + 1
            )?;
            writeln!(
                o,
                "{:<38}{}",
                "Number of I/O Completion Queues:",
                (q >> 16) + 1
            )?;
            writeln!(o)?;
        }
        writeln!(o, "Active Namespaces")?;
        writeln!(o, "=================")?;
        for (id, ns) in &self.namespaces {
            render_namespace(o, *id, ns)?;
        }
        Ok(())
    }
}

fn effect(e: &[u8], idx: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = e.get(4 * idx..4 * idx + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn effect_line(name: &str, op: usize, v: u32) -> String {
    let mut s = format!("{:>30} ({:02X}h): Supported ", name, op);
    if v & 2 != 0 {
        s.push_str("LBA-Change ");
    }
    if v & 4 != 0 {
        s.push_str("NS-Cap-Change ");
    }
    if v & 8 != 0 {
        s.push_str("NS-Inventory-Change ");
    }
    if v & 16 != 0 {
        s.push_str("Ctrlr-Cap-Change ");
    }
    s
}

fn admin_name(op: usize) -> &'static str {
    match op {
        0x00 => "Delete I/O Submission Queue",
        0x01 => "Create I/O Submission Queue",
        0x02 => "Get Log Page",
        0x04 => "Delete I/O Completion Queue",
        0x05 => "Create I/O Completion Queue",
        0x06 => "Identify",
        0x08 => "Abort",
        0x09 => "Set Features",
        0x0a => "Get Features",
        0x0c => "Asynchronous Event Request",
        0x0d => "Namespace Management",
        0x10 => "Firmware Commit",
        0x11 => "Firmware Image Download",
        0x15 => "Namespace Attachment",
        0x18 => "Keep Alive",
        0x7c => "Doorbell Buffer Config",
        0x80 => "Format NVM",
        _ => "Unknown",
    }
}

fn io_name(op: usize) -> &'static str {
    match op {
        0x00 => "Flush",
        0x01 => "Write",
        0x02 => "Read",
        0x04 => "Write Uncorrectable",
        0x05 => "Compare",
        0x08 => "Write Zeroes",
        0x09 => "Dataset Management",
        0x19 => "Copy",
        _ => "Unknown",
    }
}

fn lat(v: u32) -> String {
    if v == 0 {
        "Not Reported".into()
    } else {
        format!("{v} microseconds")
    }
}

fn power(v: u16) -> String {
    if v == 0 {
        "Not Reported".into()
    } else {
        format!("{v}")
    }
}

fn fmt_ver(v: u32) -> String {
    let (maj, min, ter) = (v >> 16, (v >> 8) & 0xff, v & 0xff);
    if ter == 0 {
        format!("{maj}.{min}")
    } else {
        format!("{maj}.{min}.{ter}")
    }
}

fn le128(b: &[u8], off: usize) -> u128 {
    let mut x = [0u8; 16];
    if let Some(s) = b.get(off..off + 16) {
        x.copy_from_slice(s);
    }
    u128::from_le_bytes(x)
}

/// One `Label:   value` line (label padded to 39 columns, like spdk_nvme_identify).
fn kv(o: &mut String, label: &str, v: impl std::fmt::Display) -> std::fmt::Result {
    writeln!(o, "{label:<39}{v}")
}

/// The same, indented under a heading.
fn kv2(o: &mut String, label: &str, v: impl std::fmt::Display) -> std::fmt::Result {
    writeln!(o, "  {label:<37}{v}")
}

fn render_health(o: &mut String, h: &[u8]) -> std::fmt::Result {
    let b = |i: usize| h.get(i).copied().unwrap_or(0);
    let ok = |bit: u8| {
        if b(0) & (1 << bit) != 0 {
            "WARNING"
        } else {
            "OK"
        }
    };
    let temp = u16::from(b(1)) | (u16::from(b(2)) << 8);
    writeln!(o, "Health Information")?;
    writeln!(o, "==================")?;
    writeln!(o, "Critical Warnings:")?;
    writeln!(o, "  {:<27}{}", "Available Spare Space:", ok(0))?;
    writeln!(o, "  {:<27}{}", "Temperature:", ok(1))?;
    writeln!(o, "  {:<27}{}", "Device Reliability:", ok(2))?;
    writeln!(
        o,
        "  {:<27}{}",
        "Read Only:",
        if b(0) & 8 != 0 { "Yes" } else { "No" }
    )?;
    writeln!(o, "  {:<27}{}", "Volatile Memory Backup:", ok(4))?;
    writeln!(
        o,
        "{:<29}{} Kelvin ({} Celsius)",
        "Current Temperature:",
        temp,
        i32::from(temp) - 273
    )?;
    writeln!(o, "{:<29}0 Kelvin (-273 Celsius)", "Temperature Threshold:")?;
    writeln!(o, "{:<29}{}%", "Available Spare:", b(3))?;
    writeln!(o, "{:<29}{}%", "Available Spare Threshold:", b(4))?;
    writeln!(o, "{:<29}{}%", "Life Percentage Used:", b(5))?;
    let rows = [
        (32, "Data Units Read:", ""),
        (48, "Data Units Written:", ""),
        (64, "Host Read Commands:", ""),
        (80, "Host Write Commands:", ""),
        (96, "Controller Busy Time:", " minutes"),
        (112, "Power Cycles:", ""),
        (128, "Power On Hours:", " hours"),
        (144, "Unsafe Shutdowns:", ""),
        (160, "Unrecoverable Media Errors:", ""),
        (176, "Lifetime Error Log Entries:", ""),
    ];
    for (off, name, unit) in rows {
        writeln!(o, "{:<29}{}{}", name, le128(h, off), unit)?;
    }
    let w = u32::from_le_bytes([b(192), b(193), b(194), b(195)]);
    let cr = u32::from_le_bytes([b(196), b(197), b(198), b(199)]);
    writeln!(o, "{:<29}{} minutes", "Warning Temperature Time:", w)?;
    writeln!(o, "{:<29}{} minutes", "Critical Temperature Time:", cr)?;
    writeln!(o)
}

fn human(bytes: u128) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 && v % 1024 == 0 && i + 1 < U.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", U.get(i).copied().unwrap_or("B"))
}

fn render_namespace(o: &mut String, id: u32, ns: &IdentifyNamespace) -> std::fmt::Result {
    let sup = |b: bool| if b { "Supported" } else { "Not Supported" };
    let bs = u128::from(ns.block_size());
    writeln!(o, "Namespace ID:{id}")?;
    writeln!(o, "{:<39}Unlimited", "Error Recovery Timeout:")?;
    writeln!(o, "{:<39}NVM (00h)", "Command Set Identifier:")?;
    kv(
        o,
        "Deallocate:",
        sup(ns.dlfeat & 0x8 != 0 || ns.nsfeat & 4 != 0),
    )?;
    kv(o, "Deallocated/Unwritten Error:", sup(ns.nsfeat & 4 != 0))?;
    let dv = match ns.dlfeat & 7 {
        1 => "All 0x00",
        2 => "All 0xFF",
        _ => "Unknown",
    };
    kv(o, "Deallocated Read Value:", dv)?;
    kv(o, "Deallocate in Write Zeroes:", sup(ns.dlfeat & 8 != 0))?;
    writeln!(o, "{:<39}0xFFFF", "Deallocated Guard Field:")?;
    writeln!(o, "{:<39}Supported", "Flush:")?;
    kv(o, "Reservation:", sup(ns.rescap != 0))?;
    let share = if ns.nmic & 1 != 0 {
        "Multiple Controllers"
    } else {
        "Private"
    };
    kv(o, "Namespace Sharing Capabilities:", share)?;
    for (name, v) in [
        ("Size (in LBAs):", ns.nsze),
        ("Capacity (in LBAs):", ns.ncap),
        ("Utilization (in LBAs):", ns.nuse),
    ] {
        writeln!(o, "{:<39}{} ({})", name, v, human(u128::from(v) * bs))?;
    }
    if ns.nguid != [0; 16] {
        let hex: String = ns.nguid.iter().map(|b| format!("{b:02X}")).collect();
        kv(o, "NGUID:", &hex)?;
        let g = &ns.nguid;
        let lo: String = g.iter().map(|b| format!("{b:02x}")).collect();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            lo.get(0..8).unwrap_or(""),
            lo.get(8..12).unwrap_or(""),
            lo.get(12..16).unwrap_or(""),
            lo.get(16..20).unwrap_or(""),
            lo.get(20..32).unwrap_or("")
        );
        kv(o, "UUID:", &uuid)?;
    }
    if ns.eui64 != [0; 8] {
        let hex: String = ns.eui64.iter().map(|b| format!("{b:02X}")).collect();
        kv(o, "EUI64:", &hex)?;
    }
    kv(o, "Thin Provisioning:", sup(ns.nsfeat & 1 != 0))?;
    kv(
        o,
        "Per-NS Atomic Units:",
        if ns.nsfeat & 2 != 0 { "Yes" } else { "No" },
    )?;
    if ns.nsfeat & 2 != 0 {
        kv2(o, "Atomic Boundary Size (Normal):", ns.nabsn)?;
        kv2(o, "Atomic Boundary Size (PFail):", ns.nabspf)?;
        kv2(o, "Atomic Boundary Offset:", ns.nabo)?;
    }
    writeln!(
        o,
        "{:<39}{}",
        "Maximum Single Source Range Length:", ns.mssrl
    )?;
    kv(o, "Maximum Copy Length:", ns.mcl)?;
    kv(o, "Maximum Source Range Count:", u16::from(ns.msrc) + 1)?;
    writeln!(o, "{:<39}No", "NGUID/EUI64 Never Reused:")?;
    writeln!(o, "{:<39}No", "Namespace Write Protected:")?;
    kv(o, "Number of LBA Formats:", u16::from(ns.nlbaf) + 1)?;
    writeln!(
        o,
        "{:<39}LBA Format #{:02}",
        "Current LBA Format:",
        ns.current_format()
    )?;
    for (i, f) in ns.lbaf.iter().enumerate() {
        writeln!(
            o,
            "LBA Format #{:02}: Data Size: {:>5}  Metadata Size: {:>5}",
            i,
            1u64.checked_shl(u32::from(f.lbads)).unwrap_or(0),
            f.ms
        )?;
    }
    writeln!(o)
}

/// Entry point of `sluice identify`: connects, prints the report on stdout.
pub fn identify_main(args: IdentifyArgs) -> Result<(), Error> {
    let trid = TransportId::parse(&args.trid)?;
    let report = identify(&trid)?;
    let mut out = std::io::stdout().lock();
    out.write_all(report.render().as_bytes())?;
    Ok(())
}

/// Connects to `trid` and gathers the identify report.
pub fn identify(trid: &TransportId) -> Result<IdentifyReport, Error> {
    let opts = ControllerOptions {
        dma_size: 1 << 20,
        ..ControllerOptions::default()
    };
    let mut c = Controller::connect(&trid.socket_path(), opts)?;
    let report = IdentifyReport::gather(&mut c, trid.label())?;
    let _ = c.shutdown(false);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_matches_spdk_labels() {
        let mut page = vec![0u8; 4096];
        page[0..2].copy_from_slice(&0x4e58u16.to_le_bytes());
        page[4..9].copy_from_slice(b"SPDK0");
        page[77] = 5;
        page[516] = 64;
        page[512] = 0x66;
        page[513] = 0x44;
        page[520] = 0b1001;
        page[768..794].copy_from_slice(b"nqn.2019-07.io.spdk:cnode0");
        let mut nsp = vec![0u8; 4096];
        nsp[0..8].copy_from_slice(&2_097_152u64.to_le_bytes());
        nsp[8..16].copy_from_slice(&2_097_152u64.to_le_bytes());
        nsp[128 + 2] = 9;
        let report = IdentifyReport {
            label: "VFIOUSER (/var/run/vfio-user/cnode0)".into(),
            cap: Cap {
                raw: 0xff | (1 << 16) | (30 << 24) | (1 << 37),
            },
            vs: 0x0002_0000,
            ctrl: IdentifyController::parse(&page),
            num_queues: Some(126 | (126 << 16)),
            namespaces: vec![(1, IdentifyNamespace::parse(&nsp))],
            ..IdentifyReport::default()
        };
        let s = report.render();
        for line in [
            "Vendor ID:                             4e58",
            "Serial Number:                         SPDK0",
            "Max Data Transfer Size:                131072",
            "Max Number of I/O Queues:              127",
            "NVMe Specification Version (VS):       2.0",
            "Maximum Queue Entries:                 256",
            "Reset Timeout:                         15000 ms",
            "Subsystem NQN:                         nqn.2019-07.io.spdk:cnode0",
            "Compare Command:             Supported",
            "Write Zeroes Command:        Supported",
            "Number of I/O Submission Queues:      127",
            "Size (in LBAs):                        2097152 (1GiB)",
            "LBA Format #00: Data Size:   512  Metadata Size:     0",
        ] {
            assert!(s.contains(line), "missing line {line:?} in\n{s}");
        }
    }
}
