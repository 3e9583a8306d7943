"""Attribution methods: each composes a seed with a rule table."""
