//! NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).
//!
//! The engine scores each patient's latest complete observation set with [`score`]; the
//! aggregate and the highest single-parameter score decide the clinical response, which
//! becomes the NEWS2 alert's priority. Band edges follow the RCP chart exactly (see
//! `shared/clinical.md`); values are first rounded to the chart's resolution (whole
//! numbers, 0.1 °C) with halves rounded away from zero, so 35.05 °C scores as 35.1 °C.

use serde::{Deserialize, Serialize};

use crate::alert::Priority;
use crate::model::{Consciousness, Spo2Scale};

/// One complete observation set, as NEWS2 needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct News2Input {
    /// Respiration rate, breaths/min.
    pub resp_rate: f64,
    /// SpO2, percent.
    pub spo2: f64,
    /// Supplemental oxygen (true) or room air (false).
    pub on_oxygen: bool,
    /// Systolic blood pressure, mmHg.
    pub systolic: f64,
    /// Pulse, beats/min.
    pub pulse: f64,
    /// Level of consciousness (ACVPU).
    pub consciousness: Consciousness,
    /// Temperature, °C.
    pub temp_c: f64,
    /// Which SpO2 scale applies to this patient.
    pub scale: Spo2Scale,
}

/// The RCP clinical response for a NEWS2 result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClinicalResponse {
    /// Aggregate 0: 12-hourly monitoring.
    Zero,
    /// Aggregate 1–4: 4–6-hourly monitoring, nurse assesses.
    Low,
    /// A single parameter scores 3 (aggregate under 5): hourly, inform the medical team.
    LowMedium,
    /// Aggregate 5–6: urgent review, hourly monitoring.
    Medium,
    /// Aggregate 7 or more: emergency, continuous monitoring, critical-care assessment.
    High,
}

impl ClinicalResponse {
    /// The response's name as stored (`zero`, `low`, `low_medium`, `medium`, `high`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClinicalResponse::Zero => "zero",
            ClinicalResponse::Low => "low",
            ClinicalResponse::LowMedium => "low_medium",
            ClinicalResponse::Medium => "medium",
            ClinicalResponse::High => "high",
        }
    }

    /// The alarm priority for this response, or `None` when no alarm is due.
    ///
    /// A single parameter of 3 is "low–medium" in the RCP chart; IEC 60601-1-8 has three
    /// levels, so it alarms at low priority with its own message.
    pub fn alarm_priority(self) -> Option<Priority> {
        match self {
            ClinicalResponse::Zero | ClinicalResponse::Low => None,
            ClinicalResponse::LowMedium => Some(Priority::Low),
            ClinicalResponse::Medium => Some(Priority::Medium),
            ClinicalResponse::High => Some(Priority::High),
        }
    }

    /// How the RCP names the response.
    pub fn describe(self) -> &'static str {
        match self {
            ClinicalResponse::Zero => "NEWS2 0: routine monitoring",
            ClinicalResponse::Low => "NEWS2 low: nurse assessment",
            ClinicalResponse::LowMedium => {
                "NEWS2 single parameter 3: urgent ward-based response, inform medical team"
            }
            ClinicalResponse::Medium => "NEWS2 5-6: urgent response, urgent clinical review",
            ClinicalResponse::High => "NEWS2 7+: emergency response, critical-care assessment",
        }
    }
}

/// A scored observation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct News2Score {
    /// Aggregate 0–20.
    pub total: u32,
    /// Points per parameter: respiration, SpO2, air/oxygen, systolic, pulse,
    /// consciousness, temperature.
    pub parts: [u8; 7],
    /// The clinical response.
    pub response: ClinicalResponse,
}

fn whole(v: f64) -> i64 {
    v.round() as i64
}

/// Respiration rate points.
pub fn resp_rate_points(rr: f64) -> u8 {
    match whole(rr) {
        ..=8 => 3,
        9..=11 => 1,
        12..=20 => 0,
        21..=24 => 2,
        _ => 3,
    }
}

/// SpO2 points on the patient's scale.
pub fn spo2_points(spo2: f64, on_oxygen: bool, scale: Spo2Scale) -> u8 {
    let s = whole(spo2);
    match scale {
        Spo2Scale::Scale1 => match s {
            ..=91 => 3,
            92..=93 => 2,
            94..=95 => 1,
            _ => 0,
        },
        Spo2Scale::Scale2 => match s {
            ..=83 => 3,
            84..=85 => 2,
            86..=87 => 1,
            88..=92 => 0,
            _ if !on_oxygen => 0,
            93..=94 => 1,
            95..=96 => 2,
            _ => 3,
        },
    }
}

/// Air or oxygen points.
pub fn oxygen_points(on_oxygen: bool) -> u8 {
    if on_oxygen { 2 } else { 0 }
}

/// Systolic blood pressure points.
pub fn systolic_points(sbp: f64) -> u8 {
    match whole(sbp) {
        ..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        _ => 3,
    }
}

/// Pulse points.
pub fn pulse_points(hr: f64) -> u8 {
    match whole(hr) {
        ..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        _ => 3,
    }
}

/// Consciousness points: alert 0, new confusion, voice, pain or unresponsive 3.
pub fn consciousness_points(c: Consciousness) -> u8 {
    if c == Consciousness::A { 0 } else { 3 }
}

/// Temperature points (tenths of a degree, halves away from zero).
pub fn temperature_points(t: f64) -> u8 {
    match (t * 10.0).round() as i64 {
        ..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        _ => 2,
    }
}

/// Scores one complete observation set.
pub fn score(i: &News2Input) -> News2Score {
    let parts = [
        resp_rate_points(i.resp_rate),
        spo2_points(i.spo2, i.on_oxygen, i.scale),
        oxygen_points(i.on_oxygen),
        systolic_points(i.systolic),
        pulse_points(i.pulse),
        consciousness_points(i.consciousness),
        temperature_points(i.temp_c),
    ];
    let total: u32 = parts.iter().map(|&p| u32::from(p)).sum();
    let response = if total >= 7 {
        ClinicalResponse::High
    } else if total >= 5 {
        ClinicalResponse::Medium
    } else if parts.contains(&3) {
        ClinicalResponse::LowMedium
    } else if total >= 1 {
        ClinicalResponse::Low
    } else {
        ClinicalResponse::Zero
    };
    News2Score {
        total,
        parts,
        response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each (value, expected points) pair straddles a chart edge from both sides.
    #[test]
    fn respiration_edges() {
        for (v, p) in [
            (0.0, 3),
            (8.0, 3),
            (9.0, 1),
            (11.0, 1),
            (12.0, 0),
            (20.0, 0),
            (21.0, 2),
            (24.0, 2),
            (25.0, 3),
            (60.0, 3),
            (8.4, 3),
            (8.5, 1),
        ] {
            assert_eq!(resp_rate_points(v), p, "rr {v}");
        }
    }

    #[test]
    fn spo2_scale1_edges() {
        for (v, p) in [
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
            (100.0, 0),
        ] {
            assert_eq!(spo2_points(v, false, Spo2Scale::Scale1), p, "spo2 {v}");
            // Scale 1 ignores oxygen for the SpO2 points (oxygen scores separately).
            assert_eq!(spo2_points(v, true, Spo2Scale::Scale1), p, "spo2 {v} on O2");
        }
    }

    #[test]
    fn spo2_scale2_edges() {
        let s2 = Spo2Scale::Scale2;
        for (v, o2, p) in [
            (83.0, false, 3),
            (84.0, false, 2),
            (85.0, false, 2),
            (86.0, false, 1),
            (87.0, false, 1),
            (88.0, false, 0),
            (92.0, false, 0),
            (92.0, true, 0),
            (93.0, false, 0),
            (100.0, false, 0),
            (93.0, true, 1),
            (94.0, true, 1),
            (95.0, true, 2),
            (96.0, true, 2),
            (97.0, true, 3),
            (100.0, true, 3),
            (83.0, true, 3),
            (87.0, true, 1),
        ] {
            assert_eq!(spo2_points(v, o2, s2), p, "spo2 {v} oxygen {o2}");
        }
    }

    #[test]
    fn systolic_edges() {
        for (v, p) in [
            (90.0, 3),
            (91.0, 2),
            (100.0, 2),
            (101.0, 1),
            (110.0, 1),
            (111.0, 0),
            (219.0, 0),
            (220.0, 3),
        ] {
            assert_eq!(systolic_points(v), p, "sbp {v}");
        }
    }

    #[test]
    fn pulse_edges() {
        for (v, p) in [
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
            (110.0, 1),
            (111.0, 2),
            (130.0, 2),
            (131.0, 3),
        ] {
            assert_eq!(pulse_points(v), p, "pulse {v}");
        }
    }

    #[test]
    fn temperature_edges_and_rounding() {
        for (v, p) in [
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
            (41.0, 2),
            (35.05, 1),
            (35.04, 3),
            (38.05, 1),
        ] {
            assert_eq!(temperature_points(v), p, "temp {v}");
        }
    }

    #[test]
    fn consciousness_and_oxygen() {
        assert_eq!(consciousness_points(Consciousness::A), 0);
        for c in [
            Consciousness::C,
            Consciousness::V,
            Consciousness::P,
            Consciousness::U,
        ] {
            assert_eq!(consciousness_points(c), 3);
        }
        assert_eq!(oxygen_points(true), 2);
        assert_eq!(oxygen_points(false), 0);
    }

    fn normal() -> News2Input {
        News2Input {
            resp_rate: 16.0,
            spo2: 97.0,
            on_oxygen: false,
            systolic: 120.0,
            pulse: 70.0,
            consciousness: Consciousness::A,
            temp_c: 37.0,
            scale: Spo2Scale::Scale1,
        }
    }

    #[test]
    fn aggregate_responses_keep_zero_and_low_distinct() {
        assert_eq!(score(&normal()).response, ClinicalResponse::Zero);
        let low = News2Input {
            pulse: 95.0,
            ..normal()
        };
        assert_eq!(score(&low).total, 1);
        assert_eq!(score(&low).response, ClinicalResponse::Low);
        let four = News2Input {
            pulse: 115.0,
            resp_rate: 22.0,
            ..normal()
        };
        assert_eq!(score(&four).total, 4);
        assert_eq!(score(&four).response, ClinicalResponse::Low);
        let single3 = News2Input {
            consciousness: Consciousness::V,
            ..normal()
        };
        assert_eq!(score(&single3).total, 3);
        assert_eq!(score(&single3).response, ClinicalResponse::LowMedium);
        let five = News2Input {
            pulse: 115.0,
            resp_rate: 22.0,
            spo2: 95.0,
            ..normal()
        };
        assert_eq!(score(&five).total, 5);
        assert_eq!(score(&five).response, ClinicalResponse::Medium);
        let six = News2Input {
            on_oxygen: true,
            pulse: 115.0,
            resp_rate: 22.0,
            ..normal()
        };
        assert_eq!(score(&six).total, 6);
        assert_eq!(score(&six).response, ClinicalResponse::Medium);
        let seven = News2Input {
            on_oxygen: true,
            pulse: 115.0,
            resp_rate: 22.0,
            spo2: 95.0,
            ..normal()
        };
        assert_eq!(score(&seven).total, 7);
        assert_eq!(score(&seven).response, ClinicalResponse::High);
        let worst = News2Input {
            resp_rate: 30.0,
            spo2: 80.0,
            on_oxygen: true,
            systolic: 80.0,
            pulse: 140.0,
            consciousness: Consciousness::U,
            temp_c: 34.0,
            scale: Spo2Scale::Scale1,
        };
        assert_eq!(score(&worst).total, 20);
    }
}
