# Time helpers: strict RFC 3339 parsing and site-local maintenance windows.
#
# Every helper is undefined (never an evaluation error) for malformed values, so a bad
# timestamp or window fails closed in the rules that use it. The one exception is an unknown
# IANA time zone name in data.plant.sites: the broker validates zone names before it pushes them.
package conduit.calendar

import rego.v1

# YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM); checked before parsing because a parse
# error is an evaluation error in regorus (and undefined in other engines).
rfc3339_pattern := `^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$`

month_days := [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

# valid(s): s is an RFC 3339 timestamp with a real calendar date.
valid(s) if {
	is_string(s)
	regex.match(rfc3339_pattern, s)
	day_exists(to_number(substring(s, 0, 4)), to_number(substring(s, 5, 2)), to_number(substring(s, 8, 2)))
}

day_exists(_, month, day) if {
	month != 2
	day <= month_days[month]
}

day_exists(_, 2, day) if day <= 28

day_exists(year, 2, 29) if leap(year)

leap(year) if {
	year % 4 == 0
	year % 100 != 0
}

leap(year) if year % 400 == 0

# ns(s): nanoseconds since the epoch. A trailing "Z" is rewritten to "+00:00" because
# rego-cpp (the differential-test engine) rejects the "Z" designator.
ns(s) := time.parse_rfc3339_ns(utc_offset(s)) if valid(s)

utc_offset(s) := concat("", [substring(s, 0, count(s) - 1), "+00:00"]) if {
	upper(substring(s, count(s) - 1, 1)) == "Z"
} else := s

# Local day ("mon".."sun") and minute of the day (0..1439) of instant t in zone tz.
local_day(t, tz) := lower(substring(time.weekday([t, tz]), 0, 3))

local_minute(t, tz) := (c[0] * 60) + c[1] if {
	c := time.clock([t, tz])
}

previous_day := {"mon": "sun", "tue": "mon", "wed": "tue", "thu": "wed", "fri": "thu", "sat": "fri", "sun": "sat"}

hhmm_pattern := `^([01][0-9]|2[0-3]):[0-5][0-9]$`

# minute_of("22:30") = 1350; undefined for anything that is not HH:MM.
minute_of(s) := (to_number(substring(s, 0, 2)) * 60) + to_number(substring(s, 3, 2)) if {
	is_string(s)
	regex.match(hhmm_pattern, s)
}

# in_window(day, minute, w): local (day, minute) falls inside maintenance window w =
# {"days": [...], "start": "HH:MM", "end": "HH:MM"}. days name the day a window starts on;
# end <= start means the window crosses midnight (start == end: 24 hours from start).
in_window(day, minute, w) if {
	start := minute_of(w.start)
	start < minute_of(w.end)
	day_listed(day, w)
	start <= minute
	minute < minute_of(w.end)
}

in_window(day, minute, w) if {
	start := minute_of(w.start)
	start >= minute_of(w.end)
	day_listed(day, w)
	start <= minute
}

in_window(day, minute, w) if {
	minute_of(w.start) >= minute_of(w.end)
	day_listed(previous_day[day], w)
	minute < minute_of(w.end)
}

day_listed(day, w) if {
	is_array(w.days)
	day in w.days
}

# window_text(w) = "tue 22:00-02:00", for reasons.
window_text(w) := sprintf("%s %s-%s", [concat(",", [d | some d in w.days; is_string(d)]), w.start, w.end])
