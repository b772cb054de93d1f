"""Provider tips: read and validate a tip file, cluster accounts into account holders, place
each holder in a jurisdiction, triage, route to receiving agencies, and write it all."""
