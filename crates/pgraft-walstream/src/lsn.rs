//! Log sequence numbers: byte positions in the WAL.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A WAL position: a 64-bit byte offset into the WAL stream.
///
/// Text form is PostgreSQL's `pg_lsn`: the high and low 32 bits in hexadecimal, separated
/// by `/`, each 1 to 8 digits (`16/B374D848`; newer servers print the low half zero-padded,
/// `16/0374D848`, which parses the same). Ordering is numeric; never compare the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, PostgreSQL's InvalidXLogRecPtr.
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is `0/0`.
    pub fn is_invalid(self) -> bool {
        self.0 == 0
    }

    /// This position plus `bytes`, or an error past the end of the WAL address space.
    pub fn checked_add(self, bytes: u64) -> Result<Lsn> {
        self.0
            .checked_add(bytes)
            .map(Lsn)
            .ok_or_else(|| Error::LsnOverflow(format!("{self} + {bytes} bytes")))
    }

    /// The number of bytes from `earlier` to `self`, or an error if `earlier` is later.
    pub fn bytes_since(self, earlier: Lsn) -> Result<u64> {
        self.0.checked_sub(earlier.0).ok_or_else(|| Error::LsnOverflow(format!("{earlier} is after {self}")))
    }

    /// The form with the low half zero-padded to 8 digits, as PostgreSQL 18 prints it.
    pub fn to_padded_string(self) -> String {
        format!("{:X}/{:08X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's classic `%X/%X` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    /// Accepts exactly what PostgreSQL's `pg_lsn_in` accepts: 1 to 8 hex digits, `/`, 1 to
    /// 8 hex digits, with no sign, prefix or white space.
    fn from_str(s: &str) -> Result<Lsn> {
        let bad = |reason| Error::InvalidLsn { input: s.to_string(), reason };
        let (hi, lo) = s.split_once('/').ok_or_else(|| bad("no '/' between the two halves"))?;
        let half = |part: &str| -> Result<u32> {
            if part.is_empty() {
                return Err(bad("an empty half"));
            }
            if part.len() > 8 {
                return Err(bad("a half longer than 8 hex digits"));
            }
            if !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("a character that is not a hex digit"));
            }
            u32::from_str_radix(part, 16).map_err(|_| bad("a half that is not hexadecimal"))
        };
        let (hi, lo) = (half(hi)?, half(lo)?);
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The table of the issue: what `pg_lsn_in` takes and what it refuses. Reference:
    /// PostgreSQL's `pg_lsn_in_internal` (`strspn` over hex digits, 1 to 8 of them on each
    /// side of one `/`, nothing after).
    #[test]
    fn valid_inputs() {
        let cases = [
            ("0/0", 0u64),
            ("0/1", 1),
            ("16/B374D848", 0x16_B374_D848),
            ("16/b374d848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
            ("00000000/00000000", 0),
            ("0/016B3748", 0x016B_3748),
            ("00000001/0000000A", 0x1_0000_000A),
            ("16/0374D848", 0x16_0374_D848),
            ("00000016/B374D848", 0x16_B374_D848),
        ];
        for (text, v) in cases {
            assert_eq!(text.parse::<Lsn>().ok(), Some(Lsn(v)), "{text}");
        }
    }

    #[test]
    fn invalid_inputs() {
        let cases = [
            ("", "no '/'"),
            ("/", "empty"),
            ("0", "no '/'"),
            ("0/", "empty"),
            ("/0", "empty"),
            ("-1/0", "not a hex digit"),
            ("+1/0", "not a hex digit"),
            ("0x1/0", "not a hex digit"),
            ("1/0x0", "not a hex digit"),
            ("123456789/0", "longer than 8"),
            ("0/123456789", "longer than 8"),
            ("000000001/0", "longer than 8"),
            ("0/0 ", "not a hex digit"),
            ("0/0\n", "not a hex digit"),
            (" 0/0", "not a hex digit"),
            ("0 /0", "not a hex digit"),
            ("0/ 0", "not a hex digit"),
            ("1/2/3", "not a hex digit"),
            ("G/0", "not a hex digit"),
            ("0/g", "not a hex digit"),
            ("0//0", "not a hex digit"),
            ("１/0", "not a hex digit"),
            ("0/0\0", "not a hex digit"),
        ];
        for (text, why) in cases {
            match text.parse::<Lsn>() {
                Ok(v) => panic!("{text:?} was accepted as {v}"),
                Err(Error::InvalidLsn { input, reason }) => {
                    assert_eq!(input, text);
                    assert!(reason.contains(why), "{text:?}: {reason:?} does not say {why:?}");
                }
                Err(e) => panic!("{text:?}: unexpected error {e}"),
            }
        }
    }

    #[test]
    fn display_forms() {
        let lsn = Lsn(0x16_0374_D848);
        assert_eq!(lsn.to_string(), "16/374D848");
        assert_eq!(lsn.to_padded_string(), "16/0374D848");
        assert_eq!(Lsn::INVALID.to_string(), "0/0");
    }

    #[test]
    fn ordering_is_numeric_not_textual() {
        // As strings "9/0" > "10/0"; as positions it is the other way round.
        let a: Lsn = "9/0".parse().expect("valid");
        let b: Lsn = "10/0".parse().expect("valid");
        assert!(a < b);
        let c: Lsn = "0/FFFFFFFF".parse().expect("valid");
        assert!(c < "1/0".parse().expect("valid"));
    }

    #[test]
    fn arithmetic_checks_overflow() {
        assert_eq!(Lsn(10).checked_add(5).ok(), Some(Lsn(15)));
        assert!(Lsn(u64::MAX).checked_add(1).is_err());
        assert_eq!(Lsn(15).bytes_since(Lsn(10)).ok(), Some(5));
        assert!(Lsn(10).bytes_since(Lsn(15)).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().ok(), Some(Lsn(v)));
            prop_assert_eq!(Lsn(v).to_padded_string().parse::<Lsn>().ok(), Some(Lsn(v)));
            // The text is exactly PostgreSQL's %X/%X: upper-case hex, no padding.
            prop_assert_eq!(Lsn(v).to_string(), format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF));
        }

        #[test]
        fn parse_accepts_any_digits_of_valid_length(hi in "[0-9a-fA-F]{1,8}", lo in "[0-9a-fA-F]{1,8}") {
            let text = format!("{hi}/{lo}");
            let want = (u64::from_str_radix(&hi, 16).expect("hex") << 32) | u64::from_str_radix(&lo, 16).expect("hex");
            prop_assert_eq!(text.parse::<Lsn>().ok(), Some(Lsn(want)));
        }

        #[test]
        fn order_matches_numbers(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(Lsn(a).cmp(&Lsn(b)), a.cmp(&b));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Lsn>();
        }
    }
}
