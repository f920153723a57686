# Time helpers: strict RFC 3339 checks and parsing, site-local maintenance windows.
#
# valid_all is the guard: parse only what it accepted, because a malformed timestamp is an
# evaluation error in regorus (and undefined in rego-cpp). Helpers are functions, not rules:
# regorus evaluates a function call several times faster than a rule reference.
package conduit.calendar

import rego.v1

# valid_all(times): each of the 1-4 elements is an RFC 3339 timestamp with an existing
# calendar date (leap years included), "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)",
# upper-case "T" and "Z". Elements may be any JSON value (sprintf renders non-strings, which
# then fail). One regular expression for the whole list, because regorus compiles it on
# every call; the split count stops one element from smuggling in two timestamps.
valid_all(times) if valid_joined(sprintf(["", "%v", "%v %v", "%v %v %v", "%v %v %v %v"][count(times)], times), count(times))

# valid_joined(joined, n): joined is n RFC 3339 timestamps (see valid_all) joined with " ".
valid_joined(joined, n) if {
	regex.match(`^(?:(?:(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29|[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31))T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])(?: |$))+$`, joined)
	count(split(joined, " ")) == n
}

# valid_strings(joined, n): valid_joined for n non-empty strings joined with " ". First the
# common shape, "YYYY-MM-DDTHH:MM:SSZ" without 02-29: a smaller expression, and as each such
# timestamp has 20 characters, the length alone shows that no element holds two of them.
valid_strings(joined, n) := true if {
	count(joined) == (21 * n) - 1
	regex.match(`^(?:[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z(?: |$))+$`, joined)
} else := true if valid_joined(joined, n)

# ns(s): nanoseconds since the epoch of a timestamp valid_all accepted. "Z" is sent as
# "+00:00" because rego-cpp (the differential-test engine) rejects the "Z" designator.
ns(s) := time.parse_rfc3339_ns(replace(s, "Z", "+00:00"))

# ---- maintenance windows -------------------------------------------------------------------

# open_windows(site, t): texts ("tue 22:00-02:00") of the site's maintenance windows open at
# instant t in the site's time zone. A window {"days": [...], "start": "HH:MM", "end": "HH:MM"}
# starts on each listed day ("mon".."sun"); end <= start means it runs past midnight
# (start == end: 24 hours). Malformed windows never match. site.timezone must be an IANA
# name (the broker validates it); an unknown zone is an evaluation error.
open_windows(site, t) := {text |
	is_string(site.timezone)
	site.timezone != ""
	day := lower(substring(time.weekday([t, site.timezone]), 0, 3))
	clock := time.clock([t, site.timezone])
	minute := (clock[0] * 60) + clock[1]
	some w in site.maintenance_windows
	span = window_span(w)
	in_window(day, minute, span[0], span[1], w.days)
	text := concat("", [concat(",", w.days), " ", w.start, "-", w.end])
}

# window_span(w) = [start, end] in minutes of the day; undefined unless both are "HH:MM"
# (00:00-23:59) and days is a list of strings.
window_span(w) := [minutes(w.start), minutes(w.end)] if {
	regex.match(`^(?:[01][0-9]|2[0-3]):[0-5][0-9] (?:[01][0-9]|2[0-3]):[0-5][0-9]$`, sprintf("%v %v", [w.start, w.end]))
	is_array(w.days)
	every d in w.days {
		is_string(d)
	}
}

# minutes("22:30") = 1350 for a checked "HH:MM". A "1" is prepended to each part because
# regorus's to_number rejects leading zeros ("08") where rego-cpp accepts them.
minutes(hhmm) := ((to_number(concat("", ["1", substring(hhmm, 0, 2)])) - 100) * 60) + (to_number(concat("", ["1", substring(hhmm, 3, 2)])) - 100)

previous_day := {"mon": "sun", "tue": "mon", "wed": "tue", "thu": "wed", "fri": "thu", "sat": "fri", "sun": "sat"}

in_window(day, minute, start, end, days) if {
	start < end
	day in days
	start <= minute
	minute < end
}

in_window(day, minute, start, end, days) if {
	start >= end
	day in days
	start <= minute
}

in_window(day, minute, start, end, days) if {
	start >= end
	previous_day[day] in days
	minute < end
}
