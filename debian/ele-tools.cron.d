# ele_report(8): report this host's PostgreSQL clusters to the ElepHaaS admin
# database (configured in /etc/ele_tools/report.ini). Quiet unless something is
# wrong; an unchanged report is not sent again, so running it often is cheap.
SHELL=/bin/sh
PATH=/usr/bin:/bin

*/5 * * * *	postgres	[ -x /usr/bin/ele_report ] && /usr/bin/ele_report
