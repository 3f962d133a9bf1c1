//! JSON number literals: the "comparable" test and exact-value semantics.
//!
//! A literal is comparable when it parses to a finite double whose shortest round-trip
//! decimal form has exactly the literal's decimal value. Only comparable numbers take part
//! in numeric comparison; the rest are matched by their literal text alone, so a value
//! like 2^53+1 is never silently rounded onto its neighbour.

use std::fmt::Write as _;

/// The double value of `lit` when it is comparable, else `None`.
///
/// `lit` is a JSON number literal as kept by serde_json's `arbitrary_precision`
/// (which rewrites `E` to `e` and adds an explicit exponent sign; neither changes the value).
pub(crate) fn comparable(lit: &str) -> Option<f64> {
    let value: f64 = lit.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // Integers of up to 15 digits are always exact doubles, and they are by far the most
    // common numbers in events (exit codes, counts, ports), so skip the formatting.
    let digits = lit.strip_prefix('-').unwrap_or(lit);
    if digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(value);
    }
    let mut shortest = StackBuf::new();
    write!(shortest, "{:e}", value.abs()).ok()?;
    let a = Decimal::parse(lit)?;
    let b = Decimal::parse(shortest.as_str())?;
    if a.same_value(&b, value.is_sign_negative()) {
        Some(value)
    } else {
        None
    }
}

/// An exact number from a pattern value list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExactNumber {
    /// Compared numerically against comparable event numbers.
    Comparable(f64),
    /// Compared by literal text only.
    Text(Box<str>),
}

impl ExactNumber {
    pub(crate) fn new(lit: &str) -> ExactNumber {
        match comparable(lit) {
            Some(v) => ExactNumber::Comparable(v),
            None => ExactNumber::Text(lit.into()),
        }
    }

    /// `event` is the event leaf's literal text; `event_value` its cached comparable value.
    pub(crate) fn matches(&self, event: &str, event_value: &mut LazyNumber) -> bool {
        match self {
            ExactNumber::Comparable(v) => event_value.get(event) == Some(*v),
            ExactNumber::Text(t) => &**t == event,
        }
    }
}

/// Computes an event number's comparable value at most once, and only if some operator asks.
#[derive(Default)]
pub(crate) struct LazyNumber(Option<Option<f64>>);

impl LazyNumber {
    pub(crate) fn get(&mut self, lit: &str) -> Option<f64> {
        *self.0.get_or_insert_with(|| comparable(lit))
    }
}

/// A number literal split into significant digits and the power of ten of the last one.
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exp: i64,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e = &rest[i + 1..];
                let e = e.strip_prefix('+').unwrap_or(e);
                // Exponents beyond i64 cannot belong to a finite double anyway; saturate.
                let exp = e.parse::<i64>().unwrap_or(if e.starts_with('-') {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                });
                (&rest[..i], exp)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Decimal {
            negative,
            int,
            frac,
            exp,
        })
    }

    fn digits(&self) -> impl DoubleEndedIterator<Item = u8> + Clone + '_ {
        self.int.bytes().chain(self.frac.bytes())
    }

    /// (significant digits, exponent of the last significant digit); `None` digits for zero.
    fn normal(&self) -> (usize, usize, i64) {
        let total = self.int.len() + self.frac.len();
        let lead = self.digits().take_while(|&b| b == b'0').count();
        if lead == total {
            return (0, 0, 0);
        }
        let trail = self.digits().rev().take_while(|&b| b == b'0').count();
        let exp = self
            .exp
            .saturating_sub(self.frac.len() as i64)
            .saturating_add(trail as i64);
        (lead, total - trail, exp)
    }

    fn same_value(&self, shortest: &Decimal<'_>, value_negative: bool) -> bool {
        let (a_lo, a_hi, a_exp) = self.normal();
        let (b_lo, b_hi, b_exp) = shortest.normal();
        let a_zero = a_lo == a_hi;
        let b_zero = b_lo == b_hi;
        if a_zero || b_zero {
            return a_zero && b_zero;
        }
        if self.negative != value_negative || a_exp != b_exp || a_hi - a_lo != b_hi - b_lo {
            return false;
        }
        self.digits()
            .skip(a_lo)
            .take(a_hi - a_lo)
            .eq(shortest.digits().skip(b_lo).take(b_hi - b_lo))
    }
}

/// Formatting target on the stack: the shortest form of any double fits in 32 bytes.
struct StackBuf {
    buf: [u8; 40],
    len: usize,
}

impl StackBuf {
    fn new() -> Self {
        StackBuf {
            buf: [0; 40],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparable_literals() {
        for lit in [
            "0",
            "-0",
            "-0.0",
            "0.1",
            "127",
            "127.0",
            "1.27e+2",
            "1e+16",
            "-2.5e+20",
            "1.7976931348623157e+308",
            "5e-324",
            "1.5e-07",
            "10000000000000000",
            "0.30000000000000004",
            "123456789012345",
            "9007199254740992",
        ] {
            assert!(comparable(lit).is_some(), "{lit} should be comparable");
        }
        assert_eq!(comparable("1.27e+2"), Some(127.0));
        assert_eq!(comparable("-2.5e+20"), Some(-2.5e20));
    }

    #[test]
    fn non_comparable_literals() {
        for lit in [
            "9007199254740993",
            "12345678901234567890",
            "1e+400",
            "-1e+400",
            "0.1000000000000000000001",
            "1.00000000000000001",
            "2e-400",
        ] {
            assert!(comparable(lit).is_none(), "{lit} should not be comparable");
        }
    }

    #[test]
    fn exact_numbers() {
        let mut lazy = LazyNumber::default();
        assert!(ExactNumber::new("127").matches("1.27e+2", &mut lazy));
        let mut lazy = LazyNumber::default();
        assert!(ExactNumber::new("0").matches("-0.0", &mut lazy));
        let mut lazy = LazyNumber::default();
        assert!(!ExactNumber::new("9007199254740992").matches("9007199254740993", &mut lazy));
        let mut lazy = LazyNumber::default();
        assert!(
            ExactNumber::new("12345678901234567890").matches("12345678901234567890", &mut lazy)
        );
        let mut lazy = LazyNumber::default();
        assert!(
            !ExactNumber::new("12345678901234567890")
                .matches("1.234567890123456789e+19", &mut lazy)
        );
    }
}
