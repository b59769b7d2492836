use super::table::Table;
use super::{DataError, open};
use std::io::Read;
use std::path::Path;

/// The job-trace formats greenfill reads. `Auto` decides from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobFormat {
    #[default]
    Auto,
    /// GAIA (`arrival_time,length,cpus`, times in hours).
    Gaia,
    /// Alibaba 2017 `batch_task` (seconds; 100 CPU units = 1 core; memory
    /// normalised to a machine). Tasks that did not finish (`Running`, `Waiting`,
    /// no end time) are skipped and counted.
    Alibaba2017,
    /// greenfill's own: `arrival,duration,cpus[,memory][,deadline][,pausable][,gpus][,id]`.
    /// Times and durations take units (`90`, `90s`, `15m`, `2h`), arrival and
    /// deadline also timestamps; memory takes bytes or `K`/`M`/`G`/`T` suffixes, all binary
    /// ([`crate::units`]).
    Greenfill,
}

/// Memory a job asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobMemory {
    Bytes(u64),
    /// A share of one machine's memory (Alibaba 2017 normalises this way).
    MachineShare(f64),
}

/// One batch job as a trace records it. Times are seconds from the trace's origin
/// (or unix seconds where the trace has real timestamps).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub arrival: i64,
    /// Seconds, > 0.
    pub duration: i64,
    /// Cores per instance, > 0, may be fractional.
    pub cpus: f64,
    pub memory: Option<JobMemory>,
    pub deadline: Option<i64>,
    pub pausable: bool,
    /// Whole GPUs per instance (greenfill CSV's `gpus`; 0 elsewhere).
    pub gpus: u32,
    /// Identical instances of this job (Alibaba tasks); 1 elsewhere.
    pub instances: u32,
    /// 1-based line in the file.
    pub line: u64,
}

#[derive(Debug, Clone)]
pub struct JobTrace {
    pub format: JobFormat,
    pub jobs: Vec<JobRecord>,
    pub rows: usize,
    /// Rows left out with the reason, e.g. `("not finished", 12_414)`.
    pub skipped: Vec<(&'static str, usize)>,
}

pub fn load_jobs(path: &Path, format: JobFormat) -> Result<JobTrace, DataError> {
    read_jobs(&path.display().to_string(), open(path)?, format)
}

pub fn read_jobs(path: &str, input: impl Read, format: JobFormat) -> Result<JobTrace, DataError> {
    let table = Table::read(path, input, true)?;
    let format = match format {
        JobFormat::Auto if table.find(&["task_create_time"]).is_some() => JobFormat::Alibaba2017,
        JobFormat::Auto if table.find(&["arrival_time"]).is_some() && table.find(&["length"]).is_some() => {
            JobFormat::Gaia
        }
        JobFormat::Auto => JobFormat::Greenfill,
        f => f,
    };
    let mut trace = match format {
        JobFormat::Gaia => gaia(&table)?,
        JobFormat::Alibaba2017 => alibaba2017(&table)?,
        JobFormat::Greenfill | JobFormat::Auto => greenfill(&table)?,
    };
    trace.format = format;
    trace.rows = table.rows.len();
    Ok(trace)
}

fn positive(table: &Table, line: u64, col: usize, v: f64, what: &str) -> Result<f64, DataError> {
    if v > 0.0 { Ok(v) } else { Err(table.field_error(line, col, format!("{what} must be positive, got {v}"))) }
}

#[allow(clippy::cast_possible_truncation, reason = "values are range-checked seconds")]
fn seconds(v: f64) -> i64 {
    v.round().clamp(-9e15, 9e15) as i64
}

fn gaia(table: &Table) -> Result<JobTrace, DataError> {
    let (a, l, c) = (table.require("arrival_time")?, table.require("length")?, table.require("cpus")?);
    let mut jobs = Vec::with_capacity(table.rows.len());
    for (i, (line, rec)) in table.rows.iter().enumerate() {
        let arrival = table.required_number(*line, rec, a)?;
        if arrival < 0.0 {
            return Err(table.field_error(*line, a, format!("arrival time {arrival} h is negative")));
        }
        let length = positive(table, *line, l, table.required_number(*line, rec, l)?, "length")?;
        let cpus = positive(table, *line, c, table.required_number(*line, rec, c)?, "cpus")?;
        jobs.push(JobRecord {
            id: format!("gaia-{i}"),
            arrival: seconds(arrival * 3600.0),
            duration: seconds(length * 3600.0).max(1),
            cpus,
            memory: None,
            deadline: None,
            pausable: false,
            gpus: 0,
            instances: 1,
            line: *line,
        });
    }
    Ok(JobTrace { format: JobFormat::Gaia, jobs, rows: 0, skipped: Vec::new() })
}

fn alibaba2017(table: &Table) -> Result<JobTrace, DataError> {
    let create = table.require("task_create_time")?;
    let end = table.require("task_end_time")?;
    let job = table.require("job_id")?;
    let task = table.require("task_id")?;
    let inst = table.require("number_of_instances")?;
    let status = table.require("status")?;
    let cpu = table.require("number_of_cpus_requested_per_instance_in_the_task")?;
    let mem = table.require("normalized_memory_requested_per_instance_in_the_task")?;
    let (mut unfinished, mut no_request) = (0, 0);
    let mut jobs = Vec::with_capacity(table.rows.len());
    for (line, rec) in &table.rows {
        let st = Table::cell(rec, status);
        let t0 = table.required_number(*line, rec, create)?;
        let t1 = table.number(*line, rec, end)?.unwrap_or(0.0);
        if !matches!(st, "Terminated" | "Failed") || t1 <= 0.0 {
            unfinished += 1;
            continue;
        }
        let Some(cpus) = table.number(*line, rec, cpu)? else {
            no_request += 1;
            continue;
        };
        if t1 < t0 {
            return Err(table.field_error(*line, end, format!("task ends at {t1} s, before it was created at {t0} s")));
        }
        let cpus = positive(table, *line, cpu, cpus, "cpus requested")? / 100.0;
        let share = table.number(*line, rec, mem)?;
        if let Some(m) = share
            && !(0.0..=1.0).contains(&m)
        {
            return Err(table.field_error(*line, mem, format!("normalised memory {m} is outside 0..=1")));
        }
        let instances = table.required_number(*line, rec, inst)?;
        if !(instances >= 1.0 && instances <= f64::from(u32::MAX)) {
            return Err(table.field_error(*line, inst, format!("instance count {instances} must be ≥ 1")));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "range-checked above")]
        let instances = instances as u32;
        jobs.push(JobRecord {
            id: format!("j{}-t{}", Table::cell(rec, job), Table::cell(rec, task)),
            arrival: seconds(t0),
            duration: seconds(t1 - t0).max(1),
            cpus,
            memory: share.map(JobMemory::MachineShare),
            deadline: None,
            pausable: false,
            gpus: 0,
            instances,
            line: *line,
        });
    }
    jobs.sort_by_key(|j| j.arrival);
    let skipped = vec![("not finished (Running/Waiting or no end time)", unfinished), ("no CPU request", no_request)];
    Ok(JobTrace { format: JobFormat::Alibaba2017, jobs, rows: 0, skipped })
}

/// A memory size in the one grammar of [`crate::units::parse_bytes`].
pub(crate) fn parse_memory(s: &str) -> Option<u64> {
    crate::units::parse_bytes(s)
}

fn time_or_offset(s: &str) -> Option<i64> {
    crate::time::parse_duration(s).map(seconds).or_else(|| crate::time::parse_timestamp(s))
}

fn greenfill(table: &Table) -> Result<JobTrace, DataError> {
    let a = table.require("arrival")?;
    let d = table.require("duration")?;
    let c = table.require("cpus")?;
    let (m, dl, p, idc) =
        (table.find(&["memory"]), table.find(&["deadline"]), table.find(&["pausable"]), table.find(&["id"]));
    let g = table.find(&["gpus"]);
    let mut jobs = Vec::with_capacity(table.rows.len());
    for (i, (line, rec)) in table.rows.iter().enumerate() {
        let line = *line;
        let cell = |col| Table::cell(rec, col);
        let arrival = time_or_offset(cell(a))
            .ok_or_else(|| table.field_error(line, a, format!("`{}` is not a time or offset", cell(a))))?;
        let duration = crate::time::parse_duration(cell(d)).ok_or_else(|| {
            table.field_error(line, d, format!("`{}` is not a non-negative duration (e.g. 90, 15m, 2h)", cell(d)))
        })?;
        let duration = seconds(positive(table, line, d, duration, "duration")?).max(1);
        let cpus = positive(table, line, c, table.required_number(line, rec, c)?, "cpus")?;
        let memory = match m.map(cell).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(JobMemory::Bytes(parse_memory(s).ok_or_else(|| {
                table.field_error(line, m.unwrap_or(0), format!("`{s}` is not a memory size (e.g. 512MiB, 4GiB)"))
            })?)),
        };
        let deadline = match dl.map(cell).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let t = time_or_offset(s).ok_or_else(|| {
                    table.field_error(line, dl.unwrap_or(0), format!("`{s}` is not a time or offset"))
                })?;
                if t < arrival + duration {
                    return Err(table.field_error(
                        line,
                        dl.unwrap_or(0),
                        format!("deadline {t} is before arrival {arrival} + duration {duration}"),
                    ));
                }
                Some(t)
            }
        };
        let pausable = match p.map(cell).unwrap_or("") {
            "" | "false" | "0" | "no" => false,
            "true" | "1" | "yes" => true,
            s => return Err(table.field_error(line, p.unwrap_or(0), format!("`{s}` is not true/false"))),
        };
        let id = idc.map(cell).filter(|s| !s.is_empty()).map_or_else(|| format!("job-{i}"), str::to_owned);
        let gpus = match g.map(cell).filter(|s| !s.is_empty()) {
            None => 0,
            Some(s) => s
                .parse::<u32>()
                .map_err(|_| table.field_error(line, g.unwrap_or(0), format!("`{s}` is not a whole number of GPUs")))?,
        };
        jobs.push(JobRecord { id, arrival, duration, cpus, memory, deadline, pausable, gpus, instances: 1, line });
    }
    Ok(JobTrace { format: JobFormat::Greenfill, jobs, rows: 0, skipped: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> Result<JobTrace, DataError> {
        read_jobs("j.csv", s.as_bytes(), JobFormat::Auto)
    }

    #[test]
    fn gaia_rows_in_hours() {
        let t = read("arrival_time,length,cpus\n0.0,0.75,4\n1.5,2,1\n").unwrap();
        assert_eq!(t.format, JobFormat::Gaia);
        assert_eq!((t.jobs[0].arrival, t.jobs[0].duration, t.jobs[0].cpus), (0, 2700, 4.0));
        assert_eq!((t.jobs[1].arrival, t.jobs[1].duration), (5400, 7200));
    }

    #[test]
    fn alibaba2017_skips_unfinished_and_scales_cpus() {
        let t = read(
            "task_create_time, task_end_time, job_id, task_id,number_of_instances, status, \
             number_of_cpus_requested_per_instance_in_the_task,normalized_memory_requested_per_instance_in_the_task\n\
             6459,6524,3,4,15740,Terminated,50,0.007956928\n\
             6036,6046,4,7,393,Waiting,,\n\
             51997,0,376,1955,1,Running,100,0.002754122\n",
        )
        .unwrap();
        assert_eq!(t.jobs.len(), 1);
        let j = &t.jobs[0];
        assert_eq!((j.id.as_str(), j.duration, j.cpus, j.instances), ("j3-t4", 65, 0.5, 15740));
        assert_eq!(j.memory, Some(JobMemory::MachineShare(0.007_956_928)));
        assert_eq!(t.skipped[0].1, 2);
    }

    #[test]
    fn greenfill_csv_with_units() {
        let t = read(
            "id,arrival,duration,cpus,memory,deadline,pausable\n\
             etl,2022-01-01T00:00:00Z,2h,1.5,4GiB,2022-01-01T12:00:00Z,true\n\
             ,600,90,2,,,\n",
        )
        .unwrap();
        let j = &t.jobs[0];
        assert_eq!((j.id.as_str(), j.duration, j.cpus, j.pausable), ("etl", 7200, 1.5, true));
        assert_eq!(j.memory, Some(JobMemory::Bytes(4 << 30)));
        assert_eq!(j.deadline, Some(j.arrival + 12 * 3600));
        assert_eq!((t.jobs[1].id.as_str(), t.jobs[1].arrival, t.jobs[1].memory), ("job-1", 600, None));
    }

    #[test]
    fn broken_inputs_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("arrival_time,length,cpus\n0,-1,1\n", "j.csv:2: column `length`: length must be positive, got -1"),
            ("arrival_time,length,cpus\n0,1,0\n", "j.csv:2: column `cpus`: cpus must be positive"),
            ("arrival_time,length,cpus\n-2,1,1\n", "j.csv:2: column `arrival_time`: arrival time -2 h is negative"),
            ("arrival,duration\n0,1\n", "no column `cpus`"),
            ("arrival,duration,cpus\n0,-5m,1\n", "j.csv:2: column `duration`: `-5m` is not a non-negative duration"),
            ("arrival,duration,cpus\nsoon,5m,1\n", "j.csv:2: column `arrival`: `soon` is not a time or offset"),
            ("arrival,duration,cpus,memory\n0,5m,1,lots\n", "column `memory`: `lots` is not a memory size"),
            ("arrival,duration,cpus,deadline\n0,1h,1,30m\n", "column `deadline`: deadline 1800 is before"),
            ("arrival,duration,cpus,pausable\n0,1h,1,maybe\n", "column `pausable`: `maybe` is not true/false"),
            ("arrival,duration,cpus\n0,0,1\n", "duration must be positive"),
        ];
        for (input, want) in cases {
            let err = read(input).unwrap_err().to_string();
            assert!(err.contains(want), "input {input:?}: got `{err}`, want `{want}`");
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512MiB"), Some(512 << 20));
        assert_eq!(parse_memory("1.5G"), Some(3 << 29));
        assert_eq!(parse_memory("100"), Some(100));
        assert_eq!(parse_memory("-1"), None);
        assert_eq!(parse_memory("3 parsecs"), None);
    }
}
