# The default mpobs pipeline in awk (a peer in python -m bench; run with mawk):
# "Line N: " before each line, the first level word tags it, and the debug and untagged lines are dropped.
# A word is bounded like Python's \b on ASCII text: not next to a letter, a digit or "_".
{
    if (match($0, /(^|[^A-Za-z0-9_])(ERROR|WARN|WARNING|INFO|DEBUG)([^A-Za-z0-9_]|$)/) && substr($0, RSTART, RLENGTH) !~ /DEBUG/)
        print "Line " NR ": " $0
}
