# Tests of the time helpers (package conduit.calendar).
package conduit.calendar_test

import rego.v1

import data.conduit.calendar

test_valid_all_accepts_rfc3339 if {
	calendar.valid_all(["2025-03-04T21:30:00Z"])
	calendar.valid_all(["2025-03-04T21:30:00.123456Z", "2025-03-04T22:30:00+01:00", "2025-03-04T16:30:00.5-05:00"])
	calendar.valid_all(["2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z"])
	calendar.valid_all(["2025-12-31T23:59:59Z", "2025-04-30T00:00:00Z"])
}

test_valid_all_rejects_everything_else if {
	every bad in [
		"2025-03-04 21:30:00Z", "2025-03-04T21:30:00", "2025-03-04t21:30:00z", "2025-13-01T00:00:00Z",
		"2025-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2025-04-31T00:00:00Z", "2025-03-04T24:00:00Z",
		"2025-03-04T21:60:00Z", "2025-03-04T21:30:60Z", "2025-03-04T21:30:00+24:00", "",
		1741123800, null, ["2025-03-04T21:30:00Z"], "2025-03-04T21:30:00Z 2025-03-04T21:30:00Z",
	] {
		not calendar.valid_all([bad])
	}
	not calendar.valid_all(["2025-03-04T21:30:00Z", "soon"])
	not calendar.valid_all([])
}

test_ns_handles_z_and_offsets if {
	calendar.ns("2025-03-04T21:30:00Z") == 1741123800000000000
	calendar.ns("2025-03-04T22:30:00+01:00") == 1741123800000000000
	calendar.ns("2025-03-04T21:30:00.5Z") == 1741123800500000000
}

site := {
	"timezone": "Europe/Berlin",
	"maintenance_windows": [
		{"days": ["tue"], "start": "22:00", "end": "02:00"},
		{"days": ["sat", "sun"], "start": "08:00", "end": "12:00"},
		{"days": ["mon"], "start": "25:00", "end": "26:00"},
	],
}

open_at(t) := calendar.open_windows(site, calendar.ns(t))

test_open_windows_same_day if {
	open_at("2025-03-08T07:00:00Z") == {"sat,sun 08:00-12:00"} # Sat 08:00 CET
	open_at("2025-03-09T10:59:59Z") == {"sat,sun 08:00-12:00"} # Sun 11:59:59
	open_at("2025-03-08T11:00:00Z") == set() # Sat 12:00: the end is exclusive
	open_at("2025-03-08T06:59:59Z") == set()
}

test_open_windows_across_midnight if {
	open_at("2025-03-04T21:00:00Z") == {"tue 22:00-02:00"} # Tue 22:00
	open_at("2025-03-04T23:30:00Z") == {"tue 22:00-02:00"} # Wed 00:30, started Tuesday
	open_at("2025-03-05T01:00:00Z") == set() # Wed 02:00
	open_at("2025-03-05T21:30:00Z") == set() # Wed 22:30
	open_at("2025-03-03T23:30:00Z") == set() # Tue 00:30: Monday has no window
}

test_open_windows_follow_daylight_saving if {
	open_at("2025-04-01T20:00:00Z") == {"tue 22:00-02:00"} # Tue 22:00 CEST (UTC+2)
	open_at("2025-04-01T20:59:00Z") == {"tue 22:00-02:00"}
	open_at("2025-03-04T20:59:00Z") == set() # Tue 21:59 CET (UTC+1)
}

test_open_windows_ignore_malformed_sites_and_windows if {
	calendar.open_windows({"maintenance_windows": site.maintenance_windows}, calendar.ns("2025-03-04T21:30:00Z")) == set()
	calendar.open_windows({"timezone": "Europe/Berlin"}, calendar.ns("2025-03-04T21:30:00Z")) == set()
	bad := {"timezone": "UTC", "maintenance_windows": [
		{"days": "tue", "start": "00:00", "end": "00:00"},
		{"days": ["tue"], "start": "9:00", "end": "23:00"},
		{"days": ["tue"], "start": "09:00"},
	]}
	calendar.open_windows(bad, calendar.ns("2025-03-04T21:30:00Z")) == set()
}

test_full_day_window if {
	day := {"timezone": "UTC", "maintenance_windows": [{"days": ["tue"], "start": "06:00", "end": "06:00"}]}
	calendar.open_windows(day, calendar.ns("2025-03-04T06:00:00Z")) == {"tue 06:00-06:00"}
	calendar.open_windows(day, calendar.ns("2025-03-05T05:59:00Z")) == {"tue 06:00-06:00"}
	calendar.open_windows(day, calendar.ns("2025-03-05T06:00:00Z")) == set()
}

test_minutes if {
	calendar.minutes("00:00") == 0
	calendar.minutes("08:09") == 489
	calendar.minutes("23:59") == 1439
}
