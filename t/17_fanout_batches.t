# The fan-out test with 1,500 streams: each worker holds more streams than one flush batch
# (256), so delivery rounds continue after the event loop has had its turn.
use strict;
use warnings;
use FindBin;

$ENV{SSE_FANOUT_STREAMS} = 1500;
$ENV{SSE_FANOUT_EVENTS} = 30;
my $rv = do "$FindBin::Bin/06_fanout.t";
die $@ if $@;
